"""A trial checkpoint as the plain torchvision model an export holds: what ``boxtune export`` writes,
``boxtune predict`` runs and the test split is evaluated with (``tune.ship``, ``tune.results``).

The state dict is normalised for the plain ``weights=None`` build: torchvision's pretrained
builders (and frozen stages) use ``FrozenBatchNorm2d``, which has no ``num_batches_tracked``
buffer and, for ``fasterrcnn_resnet50_fpn``'s COCO weights, eps 0 instead of BatchNorm2d's 1e-5.
Missing ``num_batches_tracked`` buffers are added as 0, and an eps difference is folded into the
layer's weight, so the plain build computes what the trained model computed in eval mode.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.atomic import atomic_path as _writing
from trainables.checkpoint import TrialState
from trainables.errors import BoxtuneError
from trainables.model import build_inference_model

__all__ = ["TrainedModel", "trained_model", "build_export_model", "normalize_state_dict", "checkpoint_classes",
           "save_onnx", "ONNX_OPSET"]

_BN_COUNTER = "num_batches_tracked"


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


def checkpoint_classes(state: TrialState) -> list[dict[str, Any]]:
    """The checkpoint's classes as ``{"label", "name", "dataset_id"}``, labels 1..K (a BoxtuneError otherwise)."""
    classes = sorted((dict(c) for c in state.classes), key=lambda c: int(c["label"]))
    labels = [int(c["label"]) for c in classes]
    if labels != list(range(1, len(classes) + 1)):
        raise BoxtuneError(f"checkpoint classes must have labels 1..K, got {labels}")
    return [{"label": int(c["label"]), "name": str(c["name"]), "dataset_id": c["dataset_id"]} for c in classes]


def _image_size(model: nn.Module) -> dict[str, int]:
    """The resize the model applies (px): its transform's, which for SSDlite is a fixed 320x320."""
    transform = model.transform
    return {"min_size": int(transform.min_size[0]), "max_size": int(transform.max_size)}


@dataclass
class TrainedModel:
    """A checkpoint's model in its plain build, in eval mode, and what describes it."""

    model: nn.Module
    state_dict: dict[str, torch.Tensor]  # normalised: loads strictly into the plain build
    classes: list[dict[str, Any]]
    num_classes: int  # K + 1: torchvision counts background as class 0
    model_kwargs: dict[str, Any]
    image_size: dict[str, int]  # the resize the model applies, px


def trained_model(state: TrialState) -> TrainedModel:
    """The plain ``weights=None`` build of ``state``'s architecture with its weights loaded strictly."""
    classes = checkpoint_classes(state)
    num_classes = len(classes) + 1  # + background
    kwargs = dict(state.model_kwargs)
    model = build_export_model(state.architecture, num_classes, kwargs)
    pretrained = bool((state.config.get("model") or {}).get("weights"))
    trained_eps = _norm_eps(build_export_model(state.architecture, num_classes, kwargs, pretrained=True)) if pretrained else None
    state_dict = normalize_state_dict(state.model, model=model, trained_eps=trained_eps)
    model.load_state_dict(state_dict)  # strict: proves an export's loading snippet will load it
    return TrainedModel(model.eval(), state_dict, classes, num_classes, kwargs, _image_size(model))


ONNX_OPSET = 17  # the opset ``boxtune export --format onnx`` writes


class _OnnxDetector(nn.Module):
    """One image in, (boxes, labels, scores) out: the shape ONNX Runtime users expect."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.model([image])[0]
        return detections["boxes"], detections["labels"], detections["scores"]


# The score logits each family's post-processing filters on, by parameter name: raised while the
# graph is traced (``_opened_for_tracing``). ``foreground`` leaves class 0, the background, alone.
_TRACE_OPENED = {
    "FasterRCNN": (("rpn.head.cls_logits.bias", "all"), ("roi_heads.box_predictor.cls_score.bias", "foreground")),
    "RetinaNet": (("head.classification_head.cls_logits.bias", "all"),),
    "FCOS": (("head.classification_head.cls_logits.bias", "all"), ("head.regression_head.bbox_ctrness.bias", "all")),
}
# logits raised by this: sigmoid(20) is near 1, and the box head's softmax gives each of K foreground
# classes about 1/K (over its 0.05 filter below 20 classes; past that the trace still sees every proposal)
_OPENED_BY = 20.0


def _opened_for_tracing(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` whose score filters pass everything, and the real values of what was changed.

    The exporter traces one call, and a detector's graph takes the shapes of that call's
    intermediate tensors where torchvision computes them in Python: a trained Faster R-CNN whose
    RPN passes one proposal on the tracing image gives a graph that fails or miscounts on an image
    with 40 (on the transfer benchmark's target, 5 of 10 val images failed in ONNX Runtime). Traced
    with every proposal and detection passing, as an untrained model does, the graph holds the
    general case; the changed biases are then put back (``save_onnx``). SSDlite is traced as it is.
    """
    import copy

    opened = copy.deepcopy(model)
    real = {}
    with torch.no_grad():
        for name, which in _TRACE_OPENED.get(type(model).__name__, ()):
            bias = opened.get_parameter(name)
            real[f"model.{name}"] = bias.detach().clone()  # its name in the graph, under _OnnxDetector
            (bias[1:] if which == "foreground" else bias).add_(_OPENED_BY)
    return opened, real


def _put_back(path: Path, real: Mapping[str, torch.Tensor]) -> None:
    """Set the graph's initializers named in ``real`` to those values (a BoxtuneError if one is missing)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    found = {init.name: init for init in graph.graph.initializer if init.name in real}
    if set(found) != set(real):
        raise BoxtuneError(f"the ONNX graph lacks the initializers {sorted(set(real) - set(found))}; cannot export")
    for name, init in found.items():
        init.CopyFrom(numpy_helper.from_array(real[name].numpy(), name))
    onnx.save(graph, str(path))


@contextlib.contextmanager
def _decode_any_count():
    """torchvision's ``BoxCoder.decode`` with the code width fixed instead of ``-1``, while tracing.

    Its ``reshape(box_sum, -1)`` becomes a graph Reshape to ``(N, -1)``, which ONNX Runtime cannot
    do when N is 0: a trained Faster R-CNN's RPN passes no proposal on an empty image, and the
    export failed on it. The width (4 per class) is fixed by the model, so ``reshape(-1, width)``
    computes the same for every N, 0 included.
    """
    from torchvision.models.detection import _utils as det_utils

    original = det_utils.BoxCoder.decode

    def decode(self, rel_codes: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        width = int(rel_codes.shape[-1])  # 4 per class: a constant of the model, traced as one
        pred_boxes = self.decode_single(rel_codes.reshape(-1, width), torch.cat(boxes, dim=0))
        return pred_boxes.reshape(-1, width // 4, 4)

    det_utils.BoxCoder.decode = decode
    try:
        yield
    finally:
        det_utils.BoxCoder.decode = original


def save_onnx(model: nn.Module, out: Path, *, size: int) -> None:
    """``model`` as the ONNX graph ``--format onnx`` writes: one image in, boxes, labels, scores out.

    Traced on a ``size x size*4/3`` image, with height and width dynamic, and with the model's
    score filters opened while tracing (``_opened_for_tracing``): the graph then holds any number
    of proposals and detections, whatever the weights pass on the tracing image, none included
    (``_decode_any_count``). Checked by ``onnx``."""
    try:
        import onnx
    except ImportError:
        raise BoxtuneError("--format onnx needs the onnx package: pip install boxtune[onnx]") from None
    opened, real = _opened_for_tracing(model)
    detector = _OnnxDetector(opened).eval()
    example = torch.rand(3, size, size * 4 // 3, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), _writing(out) as tmp, _decode_any_count():
        # the TorchScript-based exporter warns that it is deprecated and traces with many TracerWarnings
        warnings.simplefilter("ignore")
        torch.onnx.export(
            detector, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=["boxes", "labels", "scores"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                          "labels": {0: "detections"}, "scores": {0: "detections"}},
            # unfolded, each parameter stays an initializer under its own name, so the real biases go back
            do_constant_folding=not real,
        )
        if real:
            _put_back(tmp, real)
        onnx.checker.check_model(str(tmp))
