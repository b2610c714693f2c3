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
     "test_metrics": {"test_AP": ..., "test_AR100": ..., ...}, "test_images": 48}

``metrics`` are the epoch's val numbers (the val split chose the epoch and ranked the trial);
``test_metrics`` are the same epoch's numbers on the held-out test split when the sweep evaluated
it there (see ``tune.holdout``), else None, as is ``test_images``.

Loading it needs only torch and torchvision::

    ckpt = torch.load("best.pt", weights_only=True)
    model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"]); model.eval()

Label ``l`` of the model's output is ``classes[l - 1]``; its ``dataset_id`` is the category id of
the user's own dataset. Every architecture counts K + 1 classes with index 0 reserved (background,
or a closed channel in RetinaNet's and FCOS's sigmoid heads, which then never emit label 0).
``model_kwargs`` are per family: ``min_size``/``max_size`` for Faster R-CNN, RetinaNet and FCOS,
none for SSDlite (its builder fixes 320x320, which ``image_size`` records).

The state dict is normalised for the plain ``weights=None`` build: torchvision's pretrained
builders (and frozen stages) use ``FrozenBatchNorm2d``, which has no ``num_batches_tracked``
buffer and, for ``fasterrcnn_resnet50_fpn``'s COCO weights, eps 0 instead of BatchNorm2d's 1e-5.
Missing ``num_batches_tracked`` buffers are added as 0, and an eps difference is folded into the
layer's weight, so the plain build computes what the trained model computed in eval mode.

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

import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.atomic import atomic_path as _writing
from trainables.atomic import strict_json
from trainables.checkpoint import TrialState, load_checkpoint
from trainables.errors import BoxtuneError
from trainables.model import build_inference_model

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FORMATS",
    "ONNX_OPSET",
    "load_snippet",
    "build_export_model",
    "normalize_state_dict",
    "export_payload",
    "export_model",
    "best_checkpoint",
    "export_checkpoint",
    "export_best",
]

EXPORT_FORMAT = "boxtune-export"
EXPORT_VERSION = 1
FORMATS = ("pt", "torchscript", "onnx")
ONNX_OPSET = 17
_BN_COUNTER = "num_batches_tracked"

_SNIPPET = """\
ckpt = torch.load("best.pt", weights_only=True)
model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
model.load_state_dict(ckpt["state_dict"]); model.eval()"""


def load_snippet() -> str:
    """The three lines that load a ``.pt`` export with torch and torchvision alone (for the README)."""
    return _SNIPPET


def build_export_model(architecture: str, num_classes: int, model_kwargs: Mapping[str, Any], *,
                       pretrained: bool = False) -> nn.Module:
    """The untrained model an export loads into; ``num_classes`` counts background (K + 1).

    ``pretrained=True`` gives instead the structure of a model trained from weights
    (FrozenBatchNorm2d in the backbone, with torchvision's eps).
    """
    return build_inference_model(architecture, num_classes - 1, model_kwargs, pretrained=pretrained)


def _norm_eps(model: nn.Module) -> dict[str, float]:
    """eps of every BatchNorm2d / FrozenBatchNorm2d, by module name."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    return {name: float(m.eps) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)}


def normalize_state_dict(state_dict: Mapping[str, torch.Tensor], *, model: nn.Module,
                         trained_eps: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """``state_dict`` made to load strictly into ``model`` (a plain ``weights=None`` build).

    Adds ``num_batches_tracked = 0`` for BatchNorm2d layers the trained model kept as
    FrozenBatchNorm2d, drops ``num_batches_tracked`` buffers ``model`` has no place for, and folds
    ``trained_eps[layer]`` (the trained layer's eps, when it differs from ``model``'s) into the
    layer's weight: ``w * sqrt(var + eps_model) / sqrt(var + eps_trained)``. Any other missing or
    unexpected key is a BoxtuneError naming it.
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        if key in target:
            out[key] = value.detach().to("cpu").contiguous()
        elif key.rpartition(".")[2] != _BN_COUNTER:
            unexpected.append(key)
    modules = dict(model.named_modules())
    missing = []
    for key in target:
        if key in out:
            continue
        layer, _, attr = key.rpartition(".")
        if attr == _BN_COUNTER and isinstance(modules.get(layer), nn.BatchNorm2d):
            out[key] = torch.tensor(0, dtype=torch.long)
        else:
            missing.append(key)
    if missing or unexpected:
        raise BoxtuneError(f"the checkpoint's weights do not fit {type(model).__name__}: "
                           f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    model_eps = _norm_eps(model)
    for layer, eps in (trained_eps or {}).items():
        if layer in model_eps and not math.isclose(eps, model_eps[layer], rel_tol=0, abs_tol=1e-12):
            prefix = f"{layer}." if layer else ""
            var = out[f"{prefix}running_var"].double()
            scale = torch.sqrt(var + model_eps[layer]) / torch.sqrt(var + eps)
            weight = out[f"{prefix}weight"]
            out[f"{prefix}weight"] = (weight.double() * scale).to(weight.dtype)
    return {key: out[key] for key in target}  # the model's own key order


def _classes(state: TrialState) -> list[dict[str, Any]]:
    classes = sorted((dict(c) for c in state.classes), key=lambda c: int(c["label"]))
    labels = [int(c["label"]) for c in classes]
    if labels != list(range(1, len(classes) + 1)):
        raise BoxtuneError(f"checkpoint classes must have labels 1..K, got {labels}")
    return [{"label": int(c["label"]), "name": str(c["name"]), "dataset_id": c["dataset_id"]} for c in classes]


def export_payload(state: TrialState, *, trial_id: str | None = None, sweep: str | None = None) -> dict[str, Any]:
    """The export dict of a trial checkpoint, with its state dict normalised for the plain build."""
    return _payload_and_model(state, trial_id=trial_id, sweep=sweep)[0]


def export_model(state: TrialState) -> nn.Module:
    """The model an export of ``state`` loads, in eval mode (what ``boxtune predict`` runs)."""
    return _payload_and_model(state, trial_id=None, sweep=None)[1]


def _image_size(model: nn.Module) -> dict[str, int]:
    """The resize the model applies (px): its transform's, which for SSDlite is a fixed 320x320."""
    transform = model.transform
    return {"min_size": int(transform.min_size[0]), "max_size": int(transform.max_size)}


def _payload_and_model(state: TrialState, *, trial_id: str | None, sweep: str | None) -> tuple[dict[str, Any], nn.Module]:
    classes = _classes(state)
    num_classes = len(classes) + 1  # + background
    kwargs = dict(state.model_kwargs)
    model = build_export_model(state.architecture, num_classes, kwargs)
    pretrained = bool((state.config.get("model") or {}).get("weights"))
    trained_eps = _norm_eps(build_export_model(state.architecture, num_classes, kwargs, pretrained=True)) if pretrained else None
    state_dict = normalize_state_dict(state.model, model=model, trained_eps=trained_eps)
    model.load_state_dict(state_dict)  # strict: proves the snippet will load it
    payload = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "architecture": state.architecture,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
        "image_size": _image_size(model),
        "classes": classes,
        "state_dict": state_dict,
        "config": state.config,
        "trial_id": trial_id,
        "sweep": sweep,
        "metrics": dict(state.metrics),
        "epoch": int(state.epoch),
        "test_metrics": None,
        "test_images": None,
    }
    return payload, model.eval()


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
                      test: Mapping[str, Any] | None = None, expect_epoch: int | None = None) -> Path:
    """Write the trial checkpoint in ``checkpoint_dir`` as one self-contained file; return its path.

    ``test`` ({"epoch", "images", "metrics"}) is stored when its epoch is the checkpoint's;
    ``expect_epoch`` (the ranking's best epoch) must be the checkpoint's epoch, or nothing is written.
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
    if test is not None and int(test["epoch"]) == int(state.epoch):
        from tune.holdout import test_columns

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


def _pick_trial(view, trial: str | None):
    """The TrialView to export: ``trial`` by id, else the best-ranked one with a finished epoch."""
    from tune.report import rank_trials

    if not view.trials:
        raise BoxtuneError(f"{view.uri}: the sweep has no trials yet")
    by_id = {t.trial_id: t for t in view.trials}
    if trial is not None:
        if trial not in by_id:
            raise BoxtuneError(f"{view.uri}: no trial {trial!r}; trials: {', '.join(sorted(by_id))}")
        return by_id[trial]
    ranked = [row for row in rank_trials(view) if row["best_epoch"] > 0]
    if not ranked:
        raise BoxtuneError(f"{view.uri}: no trial has finished an epoch yet; nothing to export")
    return by_id[ranked[0]["trial"]]


@contextmanager
def _quiet_ray_analysis() -> Iterator[None]:
    # ExperimentAnalysis logs an ERROR line for a trial without checkpoints; we raise a clearer error
    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    before = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = before


def best_checkpoint(view, chosen):
    """The kept checkpoint of trial ``chosen`` (a ``TrialView``) with the highest ``score``: its best epoch.

    Ray keeps it by the same key (``CheckpointConfig(checkpoint_score_attribute="score")``), so it
    is the epoch the ranking calls best.
    """
    from ray import tune

    from tune.retention import read_retention
    from tune.storage import RunStorage
    from tune.sweep import METRIC

    ray_trial = next((t for t in view.analysis.trials if t.trial_id == chosen.trial_id), None)
    if ray_trial is None:
        raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id} is not in the experiment state")
    # checkpoints.keep_trials: a trial outside the top lost its checkpoints; a finished one kept one
    storage = RunStorage.from_uri(view.uri)
    retention = read_retention(storage)
    if chosen.trial_id in retention["deleted"]:
        kept = ", ".join(sorted(retention["kept"])) or "none"
        raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id} has no checkpoint left: it was deleted because "
                           f"{retention['deleted'][chosen.trial_id]}; its metrics, events and config remain. "
                           f"Trials with a checkpoint: {kept}")
    if chosen.trial_id in retention["kept"]:
        trial_dir = retention["trial_dirs"][chosen.trial_id]
        return tune.Checkpoint(f"{storage.path}/{trial_dir}/{retention['kept'][chosen.trial_id]}", filesystem=storage.fs)
    with _quiet_ray_analysis():
        checkpoint = view.analysis.get_best_checkpoint(ray_trial, metric=METRIC, mode="max")
    if checkpoint is None:
        raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id} has no checkpoint with a {METRIC} "
                           f"(status {chosen.status}); nothing to export")
    return checkpoint


def export_best(run: str, out: str | os.PathLike, *, trial: str | None = None, fmt: str = "pt") -> Path:
    """Export the best trial's best epoch by score (or trial ``trial``'s best epoch) from sweep ``run``.

    The epoch exported is the ranking's best epoch of that trial (checked); the test split's numbers
    for it, when the sweep evaluated them, go into the metadata.
    """
    from tune.holdout import read_test_results
    from tune.report import load_sweep, trial_row

    if fmt not in FORMATS:
        raise BoxtuneError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    view = load_sweep(run)
    chosen = _pick_trial(view, trial)
    checkpoint = best_checkpoint(view, chosen)
    expect = trial_row(view, chosen)["best_epoch"]
    results = read_test_results(view.uri) or {}
    tested = (results.get("trials") or {}).get(chosen.trial_id)
    test = None if tested is None else {"epoch": tested["epoch"], "images": int(results["images"]),
                                        "metrics": tested["metrics"]}
    with checkpoint.as_directory() as directory:
        return export_checkpoint(directory, out, fmt=fmt, trial_id=chosen.trial_id, sweep=view.uri,
                                 test=test, expect_epoch=expect or None)
