"""The test split: never trained on, never used to choose an epoch or rank a trial; evaluated once at the end.

The val split chooses each trial's best epoch and ranks the trials, so the best trial's val AP is
the maximum over epochs and trials: an optimistic estimate. When the manifest has a test split,
the sweep's top ``report.test_top`` trials (by the objective on val) are evaluated on it once,
each at its best epoch, in fp32, with the model an export of that checkpoint loads (so the
numbers equal ``evaluate_detections`` run on an export: ``trainables.inference``). They are stored in
``<run>/test_results.json`` (written atomically)::

    {"split": "test", "images": 48, "metric": "AP",
     "trials": {"<trial id>": {"rank": 1, "epoch": 7, "val_score": 0.4123..., "metrics": {"AP": ..., "AP[cat]": ...}}}}

With a confirmation stage, a confirmed config is evaluated at the checkpoint that ships for it
(the ranking's ``ship``: its seed closest to the mean), under that trial's id.

``boxtune train`` does the same for its best epoch (``<out>/test_results.json``). Reports show
the numbers as ``test_AP``, ``test_AR100``, ... beside the val numbers, which stay the ranking key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainables.architectures import EVAL_SCORE_THRESHOLD
from trainables.atomic import atomic_write_text, strict_json
from trainables.checkpoint import TrialState, load_checkpoint
from trainables.coco_eval import (
    COCO_STAT_NAMES,
    build_coco_gt,
    evaluate_detections_by_class,
)
from trainables.errors import BoxtuneError
from trainables.inference import trained_model
from trainables.model import set_score_threshold
from trainables.objective import Objective, class_metrics
from tune.run.checkpoints import best_checkpoint
from tune.run.folder import TrainFolder
from tune.run.front import eligible
from tune.run.intervals import interval, resampled_objective
from tune.run.layout import TEST_SPLIT
from tune.run.ranking import rank_trials, trial_row
from tune.run.view import SweepView

__all__ = ["test_records", "evaluate_state", "evaluate_sweep_on_test", "evaluate_train_on_test",
           "OPTIMISTIC_NOTE", "OPTIMISTIC_TRAIN_NOTE"]

log = logging.getLogger(__name__)
OPTIMISTIC_NOTE = ("no test split: val AP is optimistic (it chose each trial's best epoch and ranked the trials); "
                   "set data.test_fraction or data.test_path for an unbiased estimate")
OPTIMISTIC_TRAIN_NOTE = ("no test split: the best epoch's val AP is optimistic (val chose the epoch); "
                         "set data.test_fraction or data.test_path for an unbiased estimate")


def test_records(manifest) -> list:
    """The manifest's test records, in image-id order (empty when it has no test split)."""
    return [r for r in manifest.records() if r.split == TEST_SPLIT]


def evaluate_state(state: TrialState, records: Sequence[Any], *, device: str | torch.device = "cpu",
                   batch_size: int = 4, objective: Objective | None = None) -> dict[str, float]:
    """COCO numbers and per-class AP/AR100 of a checkpoint's model on ``records``, in fp32; with
    ``objective``, also its 95% interval over bootstrap resamples of the records (``ci_low``,
    ``ci_high``; ``tune.run.intervals``).

    The model is the one ``boxtune export`` writes for this checkpoint (the plain torchvision build).
    """
    from torch.utils.data import DataLoader

    from trainables.augment import build_eval_transforms
    from trainables.data import DetectionDataset, collate_detection
    from trainables.loop import predict

    if not records:
        raise BoxtuneError("no records to evaluate")
    device = torch.device(device)
    # the score filter val evaluation uses, whatever the family's own (trainables.architectures)
    model = set_score_threshold(trained_model(state).model, EVAL_SCORE_THRESHOLD).to(device)
    loader = DataLoader(DetectionDataset(list(records), transforms=build_eval_transforms()), batch_size=batch_size,
                        shuffle=False, num_workers=0, collate_fn=collate_detection)
    detections = predict(model, loader, device=device)  # amp_dtype None: fp32, as `boxtune predict`
    classes = [dict(c) for c in state.classes]
    gt = build_coco_gt(records, [(c["dataset_id"], c["name"]) for c in classes])
    label_to_dataset_id = {int(c["label"]): c["dataset_id"] for c in classes}
    stats, per_class = evaluate_detections_by_class(gt, detections, label_to_dataset_id=label_to_dataset_id)
    out = {**{k: float(stats[k]) for k in COCO_STAT_NAMES}, **class_metrics(per_class, classes)}
    if objective is not None:
        out["ci_low"], out["ci_high"] = interval(resampled_objective(
            gt, detections, objective=objective, classes=classes, label_to_dataset_id=label_to_dataset_id))
    return out


def _device(gpu: float) -> str:
    return "cuda" if gpu > 0 and torch.cuda.is_available() else "cpu"


def evaluate_sweep_on_test(view: SweepView, manifest, *, top: int, metric_label: str, gpu: float = 0.0,
                           echo=print) -> dict[str, Any] | None:
    """Evaluate the top ``top`` ranked trials' best epochs on the test split; write the results,
    set them as ``view.test_results`` and return them.

    A trial already evaluated at the same epoch (a resumed sweep) is not evaluated again. Returns
    None, and writes nothing, when the manifest has no test split or ``top`` is 0.
    """
    records = test_records(manifest)
    if not records or top <= 0:
        return None
    # the top feasible trials (search.constraints): an infeasible trial never wins (tune.run.front)
    ranked = [r for r in rank_trials(view, intervals=False) if r["best_epoch"] > 0 and eligible(r)][:top]
    before = (view.test_results or {}).get("trials", {})
    trials: dict[str, Any] = {}
    for row in ranked:
        chosen = view.trial(row.get("ship") or row["trial"])  # a confirmed config: the seed that ships
        cells = trial_row(view, chosen)
        old = before.get(chosen.trial_id)
        if old is not None and int(old["epoch"]) == cells["best_epoch"]:
            trials[chosen.trial_id] = {**old, "rank": row["rank"]}
            continue
        try:
            checkpoint = best_checkpoint(view, chosen)
        except BoxtuneError as err:
            # kept checkpoints follow the ranking as the trials ended (checkpoints.keep_trials >=
            # report.test_top); should a trial without one rank in the top, say so and go on
            echo(f"trial {chosen.trial_id} (rank {row['rank']}) is not evaluated on the test split: {err}")
            continue
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        if state.epoch != cells["best_epoch"]:
            raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id}'s kept checkpoint is epoch {state.epoch}, "
                               f"but its best epoch by score is {cells['best_epoch']}")
        echo(f"evaluating trial {chosen.trial_id} (rank {row['rank']}, epoch {state.epoch}) on "
             f"{len(records)} test images")
        trials[chosen.trial_id] = {"rank": row["rank"], "epoch": int(state.epoch), "val_score": cells["score"],
                                   "metrics": evaluate_state(state, records, device=_device(gpu), objective=view.objective)}
    results = {"split": TEST_SPLIT, "images": len(records), "metric": metric_label, "trials": trials}
    view.folder.write_test_results(strict_json(results) + "\n")
    view.test_results = results
    return results


def evaluate_train_on_test(out: str | Path, manifest, *, device: str | None = None) -> dict[str, Any] | None:
    """``boxtune train``: evaluate the best epoch (``best.json``) on the test split; write ``<out>/test_results.json``."""
    records = test_records(manifest)
    if not records:
        return None
    folder = TrainFolder(out)
    epoch = int(folder.best()["epoch"])
    state = load_checkpoint(folder.checkpoint_dir(epoch))
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {"split": TEST_SPLIT, "images": len(records), "epoch": epoch,
               "metrics": evaluate_state(state, records, device=dev)}
    atomic_write_text(folder.test_results_path(), strict_json(results) + "\n")
    return results

