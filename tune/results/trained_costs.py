"""Timing the trained models, once a sweep's trials have ended (``cost.trained``, on with ``cost.measure``).

The figures every trial carries while the sweep runs are its structure's, timed on an untrained
model before the trials start (``tune.launch.costs``): an upper bound. Faster R-CNN's box head runs
once per RPN proposal that passes the RPN's score filter, and an untrained RPN passes all of them;
trained, the same model ran at 0.35x to 0.65x of its figure on the transfer benchmark's target
(docs/benchmarks.md). So when the trials have ended and the cores are idle, each ended trial that
still has its best checkpoint (``checkpoints.keep_trials`` keeps the top trials and, with several
objectives, the front; ``tune.launch.retention``) is timed again: the plain model its ``.pt``
export loads, in a process of its own, on the run's val images resized to the structure's input
size (``trainables.cost``), with the sweep's ``cost.threads``, ``warmup`` and ``repeats``. A
confirmed config is timed at the seed that ships. A trial that did not end (an interrupted sweep)
waits for its resume.

The figures go to ``<run>/trained_costs.json`` (trial id -> figures, with the epoch and checkpoint
timed), and to TensorBoard as the trial's ``cost/trained_latency_ms``, ... at step 0. The ranking
takes, for ``latency_ms`` and ``onnx_latency_ms``, the lower of the trained and the untrained
figure (``tune.run.ranking.latency_cells``: a trained figure above the upper bound is timing
noise), so the front, ``search.constraints``, ``export --pick`` and the plot read that, and every
trial that won or met the limits on the untrained figures, and so kept its checkpoint, still
does. A trial whose checkpoint is gone keeps its structure's figure. The Optuna study, the live
table, checkpoint retention and MLflow (its best-trial tag is set when the trials end) keep the
untrained figures the search was guided by. A resumed or re-finished sweep does not time a
checkpoint again. Whatever fails here is said and skipped: the sweep's finish goes on.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from trainables.cost import CostRequest, measure_in_subprocess, structure_key
from trainables.errors import BoxtuneError
from tune.results.tensorboard import write_trained_cost_scalars
from tune.run.checkpoints import best_checkpoint
from tune.run.confirmation import CONFIRM_OF
from tune.run.ranking import rank_trials
from tune.run.view import SweepView, TrialView
from tune.trial_config import merge_trial_config, sweep_base

__all__ = ["time_trained_models", "timing_images"]

_ENDED = ("TERMINATED", "ERROR")  # Ray's statuses of a trial that will report no further epoch


def timing_images(manifest, count: int) -> list:
    """``count`` of the val records (all of them when there are fewer), spread evenly through the
    split in its order: the images a trained model is timed on."""
    records = manifest.records("val")
    if len(records) <= count:
        return records
    return [records[i * len(records) // count] for i in range(count)]


def time_trained_models(view: SweepView, manifest, *, echo=print) -> dict[str, dict[str, Any]]:
    """Time every ranked trial's best checkpoint that is still kept (see the module docstring); write
    ``trained_costs.json``, set ``view.trained_costs`` and return it. Nothing without ``cost.measure``
    or with ``cost.trained: false``."""
    cfg = view.config
    untrained = view.folder.costs() if cfg is not None and cfg.cost.measure and cfg.cost.trained else None
    if untrained is None:
        return view.trained_costs
    timed = dict(view.trained_costs)
    todo = []
    for row in rank_trials(view, intervals=False):
        if row["best_epoch"] <= 0:
            continue
        chosen = view.trial(row.get("ship") or row["trial"])  # a confirmed config: the seed that ships
        if chosen.status not in _ENDED:  # an interrupted sweep: its best epoch may still change on resume
            continue
        best = chosen.best(view.objective)
        if best is None:
            continue
        epoch = int(best["epoch"])
        if chosen.trial_id in timed and int(timed[chosen.trial_id]["epoch"]) == epoch:
            continue  # a resumed sweep: timed already
        try:
            checkpoint = best_checkpoint(view, chosen)
        except BoxtuneError:  # checkpoints.keep_trials deleted it: the structure's figure stays
            continue
        todo.append((row["rank"], chosen, epoch, checkpoint))
    if not todo:
        return timed
    c = cfg.cost
    records = timing_images(manifest, c.repeats)
    echo(f"cost.trained: timing {len(todo)} kept checkpoint{'s' if len(todo) != 1 else ''} (each trial's best "
         f"epoch) on {len(records)} val images, one process each")
    # an optional step: whatever fails here is said, and the sweep's finish (test split, ranking) goes on
    with tempfile.TemporaryDirectory(prefix="boxtune-trained-cost-") as tmp:
        try:
            images = _save_images(records, Path(tmp) / "images.pt")
        except Exception as err:  # noqa: BLE001
            echo(f"  not timed: the val images could not be read: {type(err).__name__}: {err}")
            return timed
        for rank, chosen, epoch, checkpoint in todo:
            key = structure_key(_model_section(view, chosen))
            spec = json.loads(key)
            try:
                with checkpoint.as_directory() as directory:
                    request = CostRequest(spec.pop("architecture"), len(manifest.class_names), spec,
                                          threads=c.threads, warmup=c.warmup, repeats=c.repeats, onnx=c.onnx,
                                          checkpoint=str(directory), images=str(images))
                    figures = measure_in_subprocess(request)
                figures.update(epoch=epoch, checkpoint=checkpoint.path)
                timed[chosen.trial_id] = figures
                view.folder.write_trained_costs(timed)  # each one as it lands: an interrupted finish keeps them
            except Exception as err:  # noqa: BLE001 - this trial keeps its structure's figure; the others are timed
                echo(f"  trial {chosen.trial_id} (rank {rank}, epoch {epoch}): not timed: {type(err).__name__}: {err}")
                continue
            echo(f"  trial {chosen.trial_id} (rank {rank}, epoch {epoch}): {_describe(figures, untrained.get(key))}")
            try:
                write_trained_cost_scalars(view, chosen.trial_id, figures)
            except Exception as err:  # noqa: BLE001 - the figures are in trained_costs.json and the ranking
                echo(f"    its TensorBoard scalars were not written: {type(err).__name__}: {err}")
    view.trained_costs = timed
    if view.confirm is not None:
        view.confirm.trained_costs = timed
    return timed


def _model_section(view: SweepView, trial: TrialView) -> dict[str, Any]:
    """The model section ``trial`` trained: the sweep's, with its sample merged in (a confirmation
    trial's is that of the search trial it confirms)."""
    sampled = trial.config
    if CONFIRM_OF in sampled:
        sampled = view.trial(sampled[CONFIRM_OF]).config
    return merge_trial_config(sweep_base(view.config), sampled)["model"]


def _describe(figures: dict[str, Any], untrained: dict[str, Any] | None) -> str:
    text = (f"{figures['latency_ms']:.1f} ms ({figures['latency_p10_ms']:.1f}..{figures['latency_p90_ms']:.1f}), "
            f"{figures['detections']:.1f} detections per image")
    if untrained and untrained.get("latency_ms"):
        text += f"; untrained {untrained['latency_ms']:.1f} ms ({figures['latency_ms'] / untrained['latency_ms']:.2f}x)"
    if figures.get("onnx_latency_ms") is not None:
        text += f"; ONNX Runtime {figures['onnx_latency_ms']:.1f} ms"
    elif figures.get("onnx_error"):
        text += f"; ONNX Runtime failed on the val images: {figures['onnx_error']}"
    return text


def _save_images(records, path: Path) -> Path:
    """The records' images as uint8 (3, H, W) tensors in one file, decoded as training decodes them
    (EXIF orientation applied, local path or URI): what each timing process reads."""
    import torch

    from trainables.data.dataset import load_image

    torch.save([load_image(r).as_subclass(torch.Tensor).contiguous() for r in records], path)
    return path
