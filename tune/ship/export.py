"""Exporting a trial checkpoint as one self-contained model file that loads with torchvision alone.

A ``.pt`` export is a ``torch.save`` dict of tensors, numbers and strings (it loads with
``torch.load(weights_only=True)``, so it cannot carry code)::

    {"format": "boxtune-export", "format_version": 1,
     "architecture": "fasterrcnn_mobilenet_v3_large_320_fpn",
     "num_classes": K + 1,            # torchvision counts background as class 0
     "model_kwargs": {"min_size": 320, "max_size": 640},   # resize, px
     "image_size": {"min_size": 320, "max_size": 640},
     "classes": [{"label": 1, "name": "raccoon", "dataset_id": 1}, ...],
     "state_dict": {...}, "config": {...}, "trial_id": "...", "sweep": "...",
     "metrics": {...}, "epoch": 7,
     "test_metrics": {"test_AP": ..., "test_AR100": ..., ...}, "test_images": 48,
     "ranking": {"rank": 1, "objective": "AP", "value": ..., "ci_low": ..., "ci_high": ...,
                 "leader_beats": NaN, "distinguishable": True, "not_distinguishable_from_leader": [...], ...,
                 # with search.confirm: its config's seeds, the mean, sd, min and max, the trial that ships
                 "seeds": 3, "mean": ..., "seed_sd": ..., "seed_min": ..., "seed_max": ..., "ship": "...",
                 "config_trial": "..."},
     "train_run": None,               # a `boxtune train` folder's export: its path (trial_id, sweep None)
     "score_threshold": 0.05,         # the model's own score filter (baked into TorchScript and ONNX)
     "eval_score_threshold": 0.001,   # the one its val numbers were measured with
     "cost": {"latency_ms": ..., "latency_p10_ms": ..., "params": ..., "file_mb": ..., "threads": 1, ...},
                                      # only with cost.measure: its model structure's figures (trainables.cost)
     "trained_cost": {"latency_ms": ..., "weights": "trained", "images": 20, "epoch": 7, ...}}
                                      # only where cost.trained timed this checkpoint (tune.results.trained_costs)

A train folder's best epoch ships with the same keys (``tune.run.train_run``): ``ranking`` is rank
1 of 1 with the interval of its best epoch. An ONNX export's ``.onnx.json`` adds ``onnx``, its
contract (``onnx_contract``: input, outputs, box format, the baked threshold).

``metrics`` are the epoch's val numbers (the val split chose the epoch and ranked the trial);
``test_metrics`` are the same epoch's numbers on the held-out test split when the sweep evaluated
it there (see ``tune.results.holdout``), else None, as is ``test_images``.

Loading it needs only torch and torchvision::

    ckpt = torch.load("best.pt", weights_only=True)
    model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"]); model.eval()

Label ``l`` of the model's output is ``classes[l - 1]``; its ``dataset_id`` is the category id of
the user's own dataset. Every architecture counts K + 1 classes with index 0 reserved (background,
or a closed channel in RetinaNet's and FCOS's sigmoid heads, which then never emit label 0).
``model_kwargs`` are per family: ``min_size``/``max_size`` for Faster R-CNN, RetinaNet and FCOS,
none for SSDlite (its builder fixes 320x320, which ``image_size`` records).

The state dict is normalised for the plain ``weights=None`` build (``trainables.inference``).

``torchscript`` saves ``torch.jit.script`` of that model: load it with ``import torchvision`` done
first (its ``nms`` op lives there), and call it as ``losses, detections = model(images)`` (scripted
torchvision detectors always return both). ``onnx`` saves a graph taking one ``[3, H, W]`` float
image in [0, 1] and returning ``boxes``, ``labels``, ``scores``. Both write the metadata beside the
model as ``<out>.json``. torch 2.15 deprecates TorchScript and the TorchScript-based ONNX exporter with a
warning (silenced here); the ONNX export uses that exporter (``dynamo=False``) because the
torch.export-based one needs ``onnxscript``. Every family exports to TorchScript and ONNX; ONNX
Runtime's outputs are checked against torch's in the tests for Faster R-CNN MobileNet, SSDlite,
RetinaNet and FCOS.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.architectures import EVAL_SCORE_THRESHOLD
from trainables.atomic import atomic_path as _writing
from trainables.atomic import strict_json
from trainables.checkpoint import TrialState, load_checkpoint
from trainables.cost import structure_key
from trainables.errors import BoxtuneError
from trainables.inference import ONNX_OPSET, save_onnx, trained_model
from trainables.model import max_detections, score_threshold, set_score_threshold
from tune.run.checkpoints import best_checkpoint
from tune.run.confirmation import CONFIRM_COLUMNS, config_of
from tune.run.folder import TrainFolder
from tune.run.ranking import pick_trial, rank_trials, test_columns, trial_row
from tune.run.train_run import train_best
from tune.run.view import load_sweep
from tune.ship.checks import EXPORT_FORMATS, check_export_arguments
from tune.ship.pick import parse_pick, pick_row

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FORMATS",
    "ONNX_OPSET",
    "load_snippet",
    "export_payload",
    "export_model",
    "export_checkpoint",
    "export_best",
    "export_run",
    "onnx_contract",
    "chosen_line",
]

EXPORT_FORMAT = "boxtune-export"
EXPORT_VERSION = 1
FORMATS = EXPORT_FORMATS

_SNIPPET = """\
ckpt = torch.load("best.pt", weights_only=True)
model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
model.load_state_dict(ckpt["state_dict"]); model.eval()"""


def load_snippet() -> str:
    """The three lines that load a ``.pt`` export with torch and torchvision alone (for the README)."""
    return _SNIPPET


def export_payload(state: TrialState, *, trial_id: str | None = None, sweep: str | None = None) -> dict[str, Any]:
    """The export dict of a trial checkpoint, with its state dict normalised for the plain build."""
    return _payload_and_model(state, trial_id=trial_id, sweep=sweep)[0]


def export_model(state: TrialState) -> nn.Module:
    """The model an export of ``state`` loads, in eval mode (what ``boxtune predict`` runs)."""
    return trained_model(state).model


def _payload_and_model(state: TrialState, *, trial_id: str | None, sweep: str | None) -> tuple[dict[str, Any], nn.Module]:
    trained = trained_model(state)
    payload = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "architecture": state.architecture,
        "num_classes": trained.num_classes,
        "model_kwargs": trained.model_kwargs,
        "image_size": trained.image_size,
        "classes": trained.classes,
        "state_dict": trained.state_dict,
        "config": state.config,
        "trial_id": trial_id,
        "sweep": sweep,
        "metrics": dict(state.metrics),
        "epoch": int(state.epoch),
        "test_metrics": None,
        "test_images": None,
        "ranking": None,
        "train_run": None,  # the `boxtune train` folder it came from; a sweep's winner has trial_id and sweep
        # the model's own score filter: what the loading snippet's build applies (torchvision's
        # per family), or what a TorchScript or ONNX export has baked into its graph
        "score_threshold": score_threshold(trained.model),
        "eval_score_threshold": EVAL_SCORE_THRESHOLD,  # the filter its val (and test) numbers were measured with
    }
    return payload, trained.model


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)  # JSON null: nothing to measure


def _write_metadata(payload: dict[str, Any], out: Path, fmt: str) -> None:
    meta = {k: v for k, v in payload.items() if k != "state_dict"} | {"file": out.name, "file_format": fmt}
    with _writing(Path(f"{out}.json")) as tmp:
        tmp.write_text(strict_json(meta) + "\n")


def _save_torchscript(model: nn.Module, out: Path) -> None:
    with warnings.catch_warnings():
        # torch 2.15: "`torch.jit.script` is deprecated" (FutureWarning); still works
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        scripted = torch.jit.script(model)
        with _writing(out) as tmp:
            torch.jit.save(scripted, str(tmp))


def export_checkpoint(checkpoint_dir: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "pt",
                      trial_id: str | None = None, sweep: str | None = None,
                      test: Mapping[str, Any] | None = None, expect_epoch: int | None = None,
                      ranking: Mapping[str, Any] | None = None, score_threshold: float | None = None) -> Path:
    """Write the trial checkpoint in ``checkpoint_dir`` as one self-contained file; return its path.

    ``test`` ({"epoch", "images", "metrics"}) is stored when its epoch is the checkpoint's;
    ``expect_epoch`` (the ranking's best epoch) must be the checkpoint's epoch, or nothing is written.
    ``ranking`` (the trial's place, its objective's interval and whether it can be told apart from
    the leader) is stored as it is. ``score_threshold`` is baked into a TorchScript or ONNX graph
    (default: the family's own, as torchvision builds it).
    """
    return _export(checkpoint_dir, out, fmt=fmt, trial_id=trial_id, sweep=sweep, test=test,
                   expect_epoch=expect_epoch, ranking=ranking, score_threshold=score_threshold)[0]


def _export(checkpoint_dir, out, *, fmt: str, trial_id: str | None = None, sweep: str | None = None,
            test: Mapping[str, Any] | None = None, expect_epoch: int | None = None,
            ranking: Mapping[str, Any] | None = None, score_threshold: float | None = None,
            train_run: str | None = None, costs: Mapping[str, Any] | None = None,
            trained_cost: Mapping[str, Any] | None = None,
            picked: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """``export_checkpoint``, returning the path and the metadata written (all but the weights)."""
    check_export_arguments(out, fmt, score_threshold)
    out = Path(out)
    state = load_checkpoint(checkpoint_dir)
    if expect_epoch is not None and int(state.epoch) != int(expect_epoch):
        raise BoxtuneError(f"trial {trial_id}: the kept checkpoint is epoch {state.epoch}, but the ranking's "
                           f"best epoch is {expect_epoch}; refusing to export a model other than the ranked one")
    payload, model = _payload_and_model(state, trial_id=trial_id, sweep=sweep)
    payload["ranking"] = None if ranking is None else dict(ranking)
    payload["train_run"] = train_run
    if costs:  # cost.measure: the model structure's figures and what they were measured under
        payload["cost"] = dict(costs[structure_key(state.config["model"])])
    if trained_cost is not None and int(trained_cost["epoch"]) == int(state.epoch):  # this checkpoint, timed
        payload["trained_cost"] = dict(trained_cost)
    if picked is not None:  # --pick: the rule, the trial it chose and why
        payload["pick"] = dict(picked)
    if test is not None and int(test["epoch"]) == int(state.epoch):
        payload["test_metrics"] = {k: _float(v) for k, v in test_columns(test["metrics"]).items()}
        payload["test_images"] = int(test["images"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    if fmt == "pt":
        with _writing(out) as tmp:
            torch.save(payload, tmp)
        return out, meta
    if score_threshold is not None:
        set_score_threshold(model, score_threshold)
        payload["score_threshold"] = meta["score_threshold"] = float(score_threshold)
    if fmt == "torchscript":
        _save_torchscript(model, out)
    else:
        # a tracing example at the model's own resize (px); the graph takes any H, W
        save_onnx(model, out, size=payload["image_size"]["min_size"] or 320)
        payload["onnx"] = meta["onnx"] = onnx_contract(payload["score_threshold"], max_detections(model))
    _write_metadata(payload, out, fmt)
    return out, meta


def onnx_contract(threshold: float, detections: int) -> dict[str, Any]:
    """What an ONNX export takes and returns (stored as ``onnx`` in its ``.onnx.json``)."""
    return {
        "opset": ONNX_OPSET,
        "input": {"name": "image", "shape": [3, "height", "width"], "dtype": "float32",
                  "meaning": "one RGB image scaled to 0..1, any height and width (the graph resizes it to image_size)"},
        "outputs": {
            "boxes": {"shape": ["detections", 4], "dtype": "float32",
                      "meaning": "x1, y1, x2, y2 in pixels of the input image"},
            "labels": {"shape": ["detections"], "dtype": "int64",
                       "meaning": "class label l: classes[l - 1]; 0 is no class (drop it if it appears)"},
            "scores": {"shape": ["detections"], "dtype": "float32", "meaning": "0..1, highest first"},
        },
        "score_threshold": float(threshold),  # baked in: only detections scoring above it come out
        "max_detections": int(detections),  # per image, after non-maximum suppression
    }


def export_best(run: str, out: str | os.PathLike, *, trial: str | None = None, fmt: str = "pt",
                score_threshold: float | None = None) -> Path:
    """Export the best trial's best epoch by score (or trial ``trial``'s best epoch) from sweep ``run``,
    or a ``boxtune train`` folder's best epoch.

    The epoch exported is the ranking's best epoch of that trial (checked); the test split's numbers
    for it, when the sweep evaluated them, go into the metadata.
    """
    return export_run(run, out, trial=trial, fmt=fmt, score_threshold=score_threshold)[0]


def export_run(run: str, out: str | os.PathLike, *, trial: str | None = None, fmt: str = "pt",
               score_threshold: float | None = None, pick: str | None = None) -> tuple[Path, dict[str, Any]]:
    """``export_best``, returning the path and the metadata written (``chosen_line`` says what it chose).

    ``pick`` (``fastest-tied``, ``max-latency=MS``; see ``tune.ship.pick``) chooses the trial by what
    it costs to run instead of taking the best."""
    check_export_arguments(out, fmt, score_threshold)
    rule = None if pick is None else parse_pick(pick)
    if rule is not None and trial is not None:
        raise BoxtuneError(f"--pick {pick} and --trial {trial}: give one; --pick chooses the trial itself")
    if TrainFolder(run).is_train_run():
        if trial is not None or rule is not None:
            raise BoxtuneError(f"{'--trial ' + trial if trial is not None else '--pick ' + pick}: {run} is a boxtune "
                               f"train folder, which holds one run")
        best = train_best(run)
        return _export(best.folder.checkpoint_dir(best.epoch), out, fmt=fmt, expect_epoch=best.epoch,
                       ranking=best.ranking(), test=best.test, score_threshold=score_threshold,
                       train_run=best.folder.uri)
    view = load_sweep(run)
    rows = rank_trials(view)
    picked = None
    if rule is not None:
        picked_id, picked = pick_row(rows, rule, run=view.uri)
        chosen = view.trial(picked_id)
    else:
        chosen = pick_trial(view, trial)
    checkpoint = best_checkpoint(view, chosen)
    expect = trial_row(view, chosen)["best_epoch"]
    ranking = export_ranking(view, rows, chosen.trial_id)
    results = view.test_results or {}
    tested = (results.get("trials") or {}).get(chosen.trial_id)
    test = None if tested is None else {"epoch": tested["epoch"], "images": int(results["images"]),
                                        "metrics": tested["metrics"]}
    with checkpoint.as_directory() as directory:
        return _export(directory, out, fmt=fmt, trial_id=chosen.trial_id, sweep=view.uri, test=test,
                       expect_epoch=expect or None, ranking=ranking, score_threshold=score_threshold,
                       costs=view.folder.costs(), trained_cost=view.trained_costs.get(chosen.trial_id),
                       picked=picked)


def _number(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def chosen_line(meta: Mapping[str, Any]) -> str:
    """What an export holds, in one line: the trial (or train run), its epoch and objective with its
    interval, and the test split's number where it was evaluated."""
    ranking = meta.get("ranking") or {}
    metrics = meta.get("metrics") or {}
    label = ranking.get("objective", "AP")
    value = ranking.get("value", metrics.get("AP"))
    if meta.get("train_run"):
        what = f"boxtune train run {meta['train_run']}"
    else:
        place = f", rank {ranking['rank']} of {ranking['trials']}" if ranking.get("rank") else ""
        what = f"trial {meta.get('trial_id')}{place}"
    text = f"{what}, epoch {meta.get('epoch')}: val {label} {_number(value)}"
    if ranking.get("ci_low") is not None and not math.isnan(float(ranking["ci_low"])):
        text += f" (95% interval {float(ranking['ci_low']):.3f}..{float(ranking['ci_high']):.3f}"
        text += f" on {ranking['val_images']} images)" if ranking.get("val_images") else ")"
    if ranking.get("seeds", 1) > 1:
        text += (f"; its config over {ranking['seeds']} seeds: mean {_number(ranking['mean'])} "
                 f"({_number(ranking['seed_min'])}..{_number(ranking['seed_max'])})")
        if ranking.get("ship") == meta.get("trial_id"):
            text += ", this seed the closest to the mean"
    if label != "AP" and metrics.get("AP") is not None:
        text += f", AP {_number(metrics['AP'])}"
    test = meta.get("test_metrics")
    if test:
        key = f"test_{label}" if f"test_{label}" in test else "test_AP"
        text += f"; {key} {_number(test.get(key))} on {meta.get('test_images')} test images"
    else:
        text += "; test split: -"
    if meta.get("pick"):
        text += f"; --pick {meta['pick']['rule']}: {meta['pick']['reason']}"
    return text


def export_ranking(view, rows: list[dict[str, Any]], trial_id: str) -> dict[str, Any]:
    """What an export records of its trial's place: rank, objective, its 95% interval, the share of
    paired resamples in which the leader beats it, whether the two can be told apart, and the
    trials that cannot be told apart from the leader (NaN/None where detections were not stored).
    With a confirmation stage, also its config's seeds (``seeds``, ``mean``, ``seed_sd``,
    ``seed_min``, ``seed_max``, ``ship``) and ``config_trial``, the search trial of that config;
    the interval is then the mean's."""
    config = config_of(view, trial_id)  # a confirmation trial stands in its config's row
    row = next(r for r in rows if r["trial"] == config)
    own = row if config == trial_id else trial_row(view, view.trial(trial_id))
    objective = view.objective.label if view.objective is not None else "AP"
    out: dict[str, Any] = {"rank": row["rank"], "trials": len(rows), "objective": objective,
                           "value": own.get("objective", own["AP"]), "score": own["score"]}
    if "seeds" in row:  # search.confirm: the config's seeds; the ranking's value is their mean
        out.update({k: row[k] for k in CONFIRM_COLUMNS}, config_trial=config)
    found = view.intervals
    out.update({k: row.get(k) for k in ("ci_low", "ci_high", "leader_beats", "distinguishable")})
    out["val_images"] = None if found is None else found.images
    out["resamples"] = None if found is None else found.resamples
    out["leader"] = None if found is None else found.leader
    out["not_distinguishable_from_leader"] = None if found is None else found.tied_with_leader()
    return out
