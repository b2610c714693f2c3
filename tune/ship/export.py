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
                 "leader_beats": NaN, "distinguishable": True, "not_distinguishable_from_leader": [...], ...}}

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

from trainables.atomic import atomic_path as _writing
from trainables.atomic import strict_json
from trainables.checkpoint import TrialState, load_checkpoint
from trainables.errors import BoxtuneError
from trainables.inference import trained_model
from tune.run.checkpoints import best_checkpoint
from tune.run.ranking import pick_trial, rank_trials, test_columns, trial_row
from tune.run.view import load_sweep

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
]

EXPORT_FORMAT = "boxtune-export"
EXPORT_VERSION = 1
FORMATS = ("pt", "torchscript", "onnx")
ONNX_OPSET = 17

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
    }
    return payload, trained.model


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)  # JSON null: nothing to measure


def _write_metadata(payload: dict[str, Any], out: Path, fmt: str) -> None:
    meta = {k: v for k, v in payload.items() if k != "state_dict"} | {"file": out.name, "file_format": fmt}
    with _writing(Path(f"{out}.json")) as tmp:
        tmp.write_text(strict_json(meta) + "\n")


class _OnnxDetector(nn.Module):
    """One image in, (boxes, labels, scores) out: the shape ONNX Runtime users expect."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.model([image])[0]
        return detections["boxes"], detections["labels"], detections["scores"]


def _save_torchscript(model: nn.Module, out: Path) -> None:
    with warnings.catch_warnings():
        # torch 2.15: "`torch.jit.script` is deprecated" (FutureWarning); still works
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        scripted = torch.jit.script(model)
        with _writing(out) as tmp:
            torch.jit.save(scripted, str(tmp))


def _save_onnx(model: nn.Module, out: Path, *, size: int) -> None:
    try:
        import onnx
    except ImportError:
        raise BoxtuneError("--format onnx needs the onnx package: pip install boxtune[onnx]") from None
    model = _OnnxDetector(model).eval()
    example = torch.rand(3, size, size * 4 // 3, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), _writing(out) as tmp:
        # the TorchScript-based exporter warns that it is deprecated and traces with many TracerWarnings
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=["boxes", "labels", "scores"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                          "labels": {0: "detections"}, "scores": {0: "detections"}},
        )
        onnx.checker.check_model(str(tmp))


def export_checkpoint(checkpoint_dir: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "pt",
                      trial_id: str | None = None, sweep: str | None = None,
                      test: Mapping[str, Any] | None = None, expect_epoch: int | None = None,
                      ranking: Mapping[str, Any] | None = None) -> Path:
    """Write the trial checkpoint in ``checkpoint_dir`` as one self-contained file; return its path.

    ``test`` ({"epoch", "images", "metrics"}) is stored when its epoch is the checkpoint's;
    ``expect_epoch`` (the ranking's best epoch) must be the checkpoint's epoch, or nothing is written.
    ``ranking`` (the trial's place, its objective's interval and whether it can be told apart from
    the leader) is stored as it is.
    """
    if fmt not in FORMATS:
        raise BoxtuneError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.is_dir():
        raise BoxtuneError(f"--out {out} is a folder; give a file name such as {out / 'best.pt'}")
    state = load_checkpoint(checkpoint_dir)
    if expect_epoch is not None and int(state.epoch) != int(expect_epoch):
        raise BoxtuneError(f"trial {trial_id}: the kept checkpoint is epoch {state.epoch}, but the ranking's "
                           f"best epoch is {expect_epoch}; refusing to export a model other than the ranked one")
    payload, model = _payload_and_model(state, trial_id=trial_id, sweep=sweep)
    payload["ranking"] = None if ranking is None else dict(ranking)
    if test is not None and int(test["epoch"]) == int(state.epoch):
        payload["test_metrics"] = {k: _float(v) for k, v in test_columns(test["metrics"]).items()}
        payload["test_images"] = int(test["images"])
    if fmt == "pt":
        with _writing(out) as tmp:
            torch.save(payload, tmp)
        return out
    if fmt == "torchscript":
        _save_torchscript(model, out)
    else:
        # a tracing example at the model's own resize (px); the graph takes any H, W
        _save_onnx(model, out, size=payload["image_size"]["min_size"] or 320)
    _write_metadata(payload, out, fmt)
    return out


def export_best(run: str, out: str | os.PathLike, *, trial: str | None = None, fmt: str = "pt") -> Path:
    """Export the best trial's best epoch by score (or trial ``trial``'s best epoch) from sweep ``run``.

    The epoch exported is the ranking's best epoch of that trial (checked); the test split's numbers
    for it, when the sweep evaluated them, go into the metadata.
    """
    if fmt not in FORMATS:
        raise BoxtuneError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    view = load_sweep(run)
    chosen = pick_trial(view, trial)
    checkpoint = best_checkpoint(view, chosen)
    expect = trial_row(view, chosen)["best_epoch"]
    ranking = export_ranking(view, rank_trials(view), chosen.trial_id)
    results = view.test_results or {}
    tested = (results.get("trials") or {}).get(chosen.trial_id)
    test = None if tested is None else {"epoch": tested["epoch"], "images": int(results["images"]),
                                        "metrics": tested["metrics"]}
    with checkpoint.as_directory() as directory:
        return export_checkpoint(directory, out, fmt=fmt, trial_id=chosen.trial_id, sweep=view.uri,
                                 test=test, expect_epoch=expect or None, ranking=ranking)


def export_ranking(view, rows: list[dict[str, Any]], trial_id: str) -> dict[str, Any]:
    """What an export records of its trial's place: rank, objective, its 95% interval, the share of
    paired resamples in which the leader beats it, whether the two can be told apart, and the
    trials that cannot be told apart from the leader (NaN/None where detections were not stored)."""
    row = next(r for r in rows if r["trial"] == trial_id)
    objective = view.objective.label if view.objective is not None else "AP"
    out: dict[str, Any] = {"rank": row["rank"], "trials": len(rows), "objective": objective,
                           "value": row.get("objective", row["AP"]), "score": row["score"]}
    found = view.intervals
    out.update({k: row.get(k) for k in ("ci_low", "ci_high", "leader_beats", "distinguishable")})
    out["val_images"] = None if found is None else found.images
    out["resamples"] = None if found is None else found.resamples
    out["leader"] = None if found is None else found.leader
    out["not_distinguishable_from_leader"] = None if found is None else found.tied_with_leader()
    return out
