"""How much of the detector trains: ``hparams.freeze_depth`` stages frozen, counted from the input.

Every architecture has eight stages, so a depth means the same thing for all of them (a sweep
over architectures can share one ``freeze_depth`` range). The backbone stages follow the feature
map's stride (1-5); then come the FPN (SSDlite: its extra feature layers), and two head stages:
for Faster R-CNN the RPN and the RoI box head, for the one-stage detectors the box-regression
tower and then the classification tower (their shared convs; SSDlite: the depthwise 3x3 convs
of each prediction block). At depth d the first d stages are frozen; at depth 8 only the final
layers train: ``roi_heads.box_predictor`` (Faster R-CNN), ``cls_logits`` and ``bbox_reg`` (plus
``bbox_ctrness`` for FCOS), or SSDlite's final 1x1 class and box convs. The pruned class layer
always trains.

=====  ===================================  ===================================
depth  ResNet-50 FPN (v1 and v2)            MobileNetV3-Large FPN (and 320)
=====  ===================================  ===================================
1      stem: backbone.body.conv1, .bn1      stem: backbone.body.0-1 (stride 2)
2      layer1: backbone.body.layer1         stride4: backbone.body.2-3
3      layer2: backbone.body.layer2         stride8: backbone.body.4-6
4      layer3: backbone.body.layer3         stride16: backbone.body.7-12
5      layer4: backbone.body.layer4         stride32: backbone.body.13-16
6      fpn: backbone.fpn                    fpn: backbone.fpn
7      rpn: rpn                             rpn: rpn
8      box_head: roi_heads.box_head         box_head: roi_heads.box_head
=====  ===================================  ===================================

=====  ==============================================  ===============================================
depth  RetinaNet (v1, v2) and FCOS, ResNet-50 FPN      SSDlite320 MobileNetV3-Large
=====  ==============================================  ===============================================
1-5    as ResNet-50 FPN above (backbone.body)          stem, stride4, stride8, stride16 as MobileNetV3
                                                       above, in backbone.features.0; stride32:
                                                       backbone.features.0.13 and backbone.features.1
6      fpn: backbone.fpn                               extras: backbone.extra
7      box_tower: head.regression_head.conv            box_tower: head.regression_head.module_list.*.0
8      class_tower: head.classification_head.conv      class_tower: head.classification_head.module_list.*.0
=====  ==============================================  ===============================================

(MobileNetV3's ``features`` blocks 0-16 sit in ``backbone.body``; block 16 is the 1x1 conv to
960 channels at stride 32. torchvision's own ``trainable_backbone_layers`` keeps it apart as a
sixth backbone stage; here it belongs to the stride-32 stage so depths line up with ResNet's.
SSDlite splits block 13, the first at stride 32, after its 1x1 expansion conv, to tap the
stride-16 map: ``backbone.features.0.13`` is that conv and ``backbone.features.1`` the rest of
blocks 13-16, so the stride-32 stage is the same five blocks.)

Freezing sets ``requires_grad=False`` and replaces each ``BatchNorm2d`` of a frozen stage by a
``FrozenBatchNorm2d`` with the same statistics, affine values and eps, so a frozen stage stays
frozen in training mode too (a BatchNorm2d's running statistics move on every training forward,
whatever ``requires_grad`` says).

A depth must do something: depth d is refused (ConfigError) when stage d has nothing left to
freeze, i.e. no parameter that still requires grad and no ``BatchNorm2d``. Then depth d trains
exactly what depth d-1 trains, and a sweep would spend trials on a duplicate. Models built by
boxtune never hit this (every stage has convolution weights, and torchvision's pretrained
builders freeze nothing when asked for all backbone layers); a model already frozen by hand or
by torchvision's ``trainable_backbone_layers`` does.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from trainables.errors import ConfigError

__all__ = [
    "STAGES",
    "FreezeReport",
    "apply_freeze",
    "freeze_batchnorm",
    "max_freeze_depth",
    "trainable_parameters",
    "validate_freeze_depth",
]

_RESNET_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stem", ("backbone.body.conv1", "backbone.body.bn1")),
    ("layer1", ("backbone.body.layer1",)),
    ("layer2", ("backbone.body.layer2",)),
    ("layer3", ("backbone.body.layer3",)),
    ("layer4", ("backbone.body.layer4",)),
    ("fpn", ("backbone.fpn",)),
    ("rpn", ("rpn",)),
    ("box_head", ("roi_heads.box_head",)),
)


def _blocks(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"backbone.body.{i}" for i in range(first, last + 1))


# MobileNetV3-Large features grouped by output stride (blocks 2, 4, 7 and 13 halve the resolution)
_MOBILENET_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stem", _blocks(0, 1)),
    ("stride4", _blocks(2, 3)),
    ("stride8", _blocks(4, 6)),
    ("stride16", _blocks(7, 12)),
    ("stride32", _blocks(13, 16)),
    ("fpn", ("backbone.fpn",)),
    ("rpn", ("rpn",)),
    ("box_head", ("roi_heads.box_head",)),
)

# RetinaNet and FCOS: the same ResNet-50 FPN, then the head's two towers of 3x3 convs
_ONESTAGE_RESNET_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    *_RESNET_STAGES[:6],
    ("box_tower", ("head.regression_head.conv",)),
    ("class_tower", ("head.classification_head.conv",)),
)


def _features(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"backbone.features.0.{i}" for i in range(first, last + 1))


_SSDLITE_MAPS = 6  # feature maps SSDlite predicts from: two of the backbone, four extras
# SSDlite's MobileNetV3 grouped by output stride as above; the head's prediction blocks are a
# depthwise 3x3 conv (.0) and the final 1x1 conv (.1) per feature map
_SSDLITE_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stem", _features(0, 1)),
    ("stride4", _features(2, 3)),
    ("stride8", _features(4, 6)),
    ("stride16", _features(7, 12)),
    ("stride32", ("backbone.features.0.13", "backbone.features.1")),
    ("extras", ("backbone.extra",)),
    ("box_tower", tuple(f"head.regression_head.module_list.{i}.0" for i in range(_SSDLITE_MAPS))),
    ("class_tower", tuple(f"head.classification_head.module_list.{i}.0" for i in range(_SSDLITE_MAPS))),
)

# architecture -> ((stage name, module paths), ...), from the input to the last head stage
STAGES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "fasterrcnn_resnet50_fpn": _RESNET_STAGES,
    "fasterrcnn_resnet50_fpn_v2": _RESNET_STAGES,
    "fasterrcnn_mobilenet_v3_large_fpn": _MOBILENET_STAGES,
    "fasterrcnn_mobilenet_v3_large_320_fpn": _MOBILENET_STAGES,
    "retinanet_resnet50_fpn": _ONESTAGE_RESNET_STAGES,
    "retinanet_resnet50_fpn_v2": _ONESTAGE_RESNET_STAGES,
    "fcos_resnet50_fpn": _ONESTAGE_RESNET_STAGES,
    "ssdlite320_mobilenet_v3_large": _SSDLITE_STAGES,
}


@dataclass(frozen=True)
class FreezeReport:
    """What ``apply_freeze`` did. Counts are parameter elements; FrozenBatchNorm2d buffers are not
    parameters and count in neither."""

    depth: int
    frozen_stages: tuple[str, ...]
    trainable_params: int
    frozen_params: int
    frozen_batchnorms: int  # BatchNorm2d layers replaced by FrozenBatchNorm2d in this call


def max_freeze_depth(architecture: str) -> int:
    """The deepest freeze: every stage frozen, only the final class and box layers train."""
    return len(_stages(architecture))


def validate_freeze_depth(architecture: str, depth: int) -> None:
    """Raise ConfigError unless 0 <= depth <= max_freeze_depth(architecture)."""
    top = max_freeze_depth(architecture)
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or not 0 <= depth <= top:
        raise ConfigError(
            f"hparams.freeze_depth should be in the range [0,{top}] for {architecture}, got {depth!r} "
            f"(0 trains everything, {top} only the final class and box layers)"
        )


def apply_freeze(model: nn.Module, *, architecture: str, depth: int) -> FreezeReport:
    """Freeze the first ``depth`` stages of ``model`` in place (see the module's table)."""
    validate_freeze_depth(architecture, depth)
    stages = _stages(architecture)[: int(depth)]
    if stages:
        name, paths = stages[-1]
        if not _has_anything_to_freeze(model, paths):
            raise ConfigError(
                f"hparams.freeze_depth={depth} does nothing for this model: stage {depth} ({name}: "
                f"{', '.join(paths)}) has no trainable parameter and no BatchNorm2d left, so it trains "
                f"the same parameters as freeze_depth={depth - 1}; drop {depth} from the search space"
            )
    prefixes = [path for _, paths in stages for path in paths]
    for path in prefixes:
        for parameter in model.get_submodule(path).parameters():
            parameter.requires_grad_(False)
    converted = freeze_batchnorm(model, prefixes=prefixes) if prefixes else 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return FreezeReport(int(depth), tuple(n for n, _ in stages), trainable, frozen, converted)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every parameter that requires grad, in ``named_parameters`` order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def freeze_batchnorm(
    model: nn.Module, *, prefixes: Iterable[str] | None = None, eps: float | None = None
) -> int:
    """Replace ``BatchNorm2d`` layers by ``FrozenBatchNorm2d`` with the same statistics and affine values.

    Only layers whose dotted name is one of ``prefixes`` or lies below one (all layers when None).
    ``eps`` None keeps each layer's own eps (the frozen layer then computes what the BatchNorm2d
    computes in eval mode). Returns how many layers were replaced.
    """
    wanted = None if prefixes is None else tuple(prefixes)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d)
        and (wanted is None or any(name == p or name.startswith(p + ".") for p in wanted))
    ]
    for name, bn in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _frozen_copy(bn, bn.eps if eps is None else eps))
    return len(targets)


def _frozen_copy(bn: nn.BatchNorm2d, eps: float) -> FrozenBatchNorm2d:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot freeze {bn}: it keeps no running statistics")
    stats = bn.running_mean
    frozen = FrozenBatchNorm2d(bn.num_features, eps=eps).to(device=stats.device, dtype=stats.dtype)
    with torch.no_grad():
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
        if bn.weight is not None:  # affine=False keeps FrozenBatchNorm2d's ones and zeros
            frozen.weight.copy_(bn.weight)
        if bn.bias is not None:
            frozen.bias.copy_(bn.bias)
    return frozen


def _has_anything_to_freeze(model: nn.Module, paths: Iterable[str]) -> bool:
    for path in paths:
        module = model.get_submodule(path)
        if any(p.requires_grad for p in module.parameters()):
            return True
        if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
            return True
    return False


def _stages(architecture: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    try:
        return STAGES[architecture]
    except KeyError:
        raise ConfigError(
            f"model.architecture: unknown architecture {architecture!r}; accepted: {', '.join(STAGES)}"
        ) from None
