"""The class heads of RetinaNet, FCOS and SSDlite cut from COCO's 91 classes to the dataset's K.

How torchvision lays them out:

* RetinaNet and FCOS: one final 3x3 conv, ``head.classification_head.cls_logits``, with
  ``num_anchors * num_classes`` output channels, anchor-major: channel ``a * C + c`` scores class
  c at anchor a (RetinaNet has 9 anchors per location, FCOS one). Scores are sigmoids, one per
  class, and there is no background class; torchvision's COCO models still keep index 0 (they
  count 91 "classes" like Faster R-CNN), a channel that is never a positive.
* SSDlite: one such conv per feature map (six), the final 1x1 conv of each depthwise-separable
  block in ``head.classification_head.module_list``, laid out the same way with 6 anchors per
  location. Scores are a softmax over the classes, and class 0 is the background.

Pruning builds a new conv with ``num_anchors * (K + 1)`` channels and copies, for every anchor,
the weight and bias channel of the mapped COCO class; SSDlite's background channel (class 0) is
copied per anchor too. A class with no mapping keeps torchvision's own initialisation of that
conv: normal(std 0.01) weights and the prior bias ``-log((1 - 0.01) / 0.01)`` (every class starts
at probability 0.01, so a fresh class does not begin by firing everywhere) for RetinaNet and
FCOS, normal(std 0.03) weights and zero bias for SSDlite. The head's own ``num_classes``
(SSDlite: ``num_columns``) is updated with the conv, since its forward ``view()``s the channels
by it.

For the sigmoid heads, index 0 is closed instead: zero weights and a bias of ``CLOSED_LOGIT``,
a score below 1e-40 on any input, far under torchvision's score thresholds (0.05 RetinaNet, 0.2
FCOS), so a plain torchvision build of the model never emits label 0. Its loss gradient is ~0
too, so training keeps it closed; boxtune's own prediction paths drop label 0 all the same.

Box regression in these heads is class-agnostic (4 deltas per anchor, FCOS adds one centerness
channel per anchor), so it is kept whole: nothing of it depends on which classes remain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from trainables.errors import TrainingError

__all__ = ["CLOSED_LOGIT", "PRIOR_PROBABILITY", "prune_class_head", "check_class_head", "class_convs"]

PRIOR_PROBABILITY = 0.01  # torchvision's RetinaNet/FCOS prior: a fresh class starts at p = 0.01
CLOSED_LOGIT = -100.0  # sigmoid(-100) ~ 4e-44: the reserved index 0 of a sigmoid head never scores
_SIGMOID_FAMILIES = ("retinanet", "fcos")
_SSD_INIT_STD = 0.03  # torchvision's SSDlite head init (ssdlite._normal_init)
_SIGMOID_INIT_STD = 0.01  # torchvision's RetinaNet/FCOS cls_logits init


def class_convs(model: nn.Module, family: str) -> list[nn.Conv2d]:
    """The final class convs of a one-stage model: one for RetinaNet/FCOS, one per feature map for SSD."""
    head = _class_head(model, family)
    if family in _SIGMOID_FAMILIES:
        return [head.cls_logits]
    return [_final_conv(block) for block in head.module_list]


def _class_head(model: nn.Module, family: str) -> nn.Module:
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if head is None:
        raise TrainingError(f"model has no head.classification_head; expected a torchvision {family} model")
    return head


def _final_conv(block: nn.Module) -> nn.Conv2d:
    """The last Conv2d of an SSD prediction block (SSDlite: depthwise 3x3, then this 1x1)."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TrainingError(f"SSD prediction block {type(block).__name__} has no Conv2d")
    return convs[-1]


def _num_classes(head: nn.Module, family: str) -> int:
    return int(head.num_classes if family in _SIGMOID_FAMILIES else head.num_columns)


def prune_class_head(model: nn.Module, family: str, source_rows: Sequence[int | None]) -> None:
    """Cut the class head of ``model`` in place to ``len(source_rows)`` classes (K + 1).

    ``source_rows[k]`` is the COCO class whose channels new class k copies at every anchor, None
    for a fresh class; ``source_rows[0]`` must be 0 (SSD copies background; RetinaNet and FCOS
    close the reserved index 0, see the module docstring).
    """
    if family not in (*_SIGMOID_FAMILIES, "ssd"):
        raise ValueError(f"family should be one of retinanet, fcos, ssd, got {family!r}")
    if len(source_rows) < 2 or source_rows[0] != 0:
        raise ValueError(f"source_rows must start with 0 (background) and name at least one class, got {list(source_rows)}")
    head = _class_head(model, family)
    num_source = _num_classes(head, family)
    bad = [r for r in source_rows if r is not None and not 0 <= r < num_source]
    if bad:
        raise ValueError(f"source rows {bad} out of range for a {num_source}-class head")
    num_new = len(source_rows)
    if family in _SIGMOID_FAMILIES:
        head.cls_logits = _pruned_conv(head.cls_logits, num_source, source_rows, family)
        head.num_classes = num_new
    else:
        for block in head.module_list:
            old = _final_conv(block)
            new = _pruned_conv(old, num_source, source_rows, family)
            _replace_child(block, old, new)
        head.num_columns = num_new


def _replace_child(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, module in parent.named_modules():
        if module is old:
            owner_name, _, child = name.rpartition(".")
            setattr(parent.get_submodule(owner_name) if owner_name else parent, child, new)
            return
    raise TrainingError("class conv not found in its prediction block")


def _pruned_conv(old: nn.Conv2d, num_source: int, source_rows: Sequence[int | None], family: str) -> nn.Conv2d:
    if old.out_channels % num_source:
        raise TrainingError(f"class conv has {old.out_channels} channels, not a multiple of {num_source} classes")
    anchors = old.out_channels // num_source
    num_new = len(source_rows)
    new = nn.Conv2d(old.in_channels, anchors * num_new, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, groups=old.groups, bias=True)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    sigmoid = family in _SIGMOID_FAMILIES
    with torch.no_grad():
        # torchvision's initialisation of this conv, which fresh classes keep
        nn.init.normal_(new.weight, std=_SIGMOID_INIT_STD if sigmoid else _SSD_INIT_STD)
        prior = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        nn.init.constant_(new.bias, prior if sigmoid else 0.0)
        for a in range(anchors):  # channel a * C + c is class c at anchor a
            for c, src in enumerate(source_rows):
                dst = a * num_new + c
                if sigmoid and c == 0:  # the reserved index: closed
                    new.weight[dst] = 0.0
                    new.bias[dst] = CLOSED_LOGIT
                elif src is not None:
                    new.weight[dst] = old.weight[a * num_source + src]
                    new.bias[dst] = old.bias[a * num_source + src]
    return new


def check_class_head(model: nn.Module, family: str, num_classes: int) -> None:
    """Raise TrainingError unless the class head scores ``num_classes`` + 1 classes at every anchor.

    ``num_classes`` is the dataset's K. The anchors per location are read from the class-agnostic
    box regression (4 channels per anchor), which pruning never touches.
    """
    expected = num_classes + 1  # index 0: background (SSD) or the closed reserved index (sigmoid heads)
    head = _class_head(model, family)
    regression = getattr(model.head, "regression_head", None)
    declared = _num_classes(head, family)
    if family in _SIGMOID_FAMILIES:
        pairs = [(head.cls_logits, regression.bbox_reg)]
    else:
        pairs = list(zip(class_convs(model, family), [_final_conv(b) for b in regression.module_list], strict=True))
    problems = []
    if declared != expected:
        name = "num_columns" if family == "ssd" else "num_classes"
        problems.append(f"head {name} is {declared}")
    for i, (cls_conv, box_conv) in enumerate(pairs):
        anchors = box_conv.out_channels // 4
        if cls_conv.out_channels != anchors * expected:
            problems.append(f"class conv {i} has {cls_conv.out_channels} channels for {anchors} anchors")
    if problems:
        raise TrainingError(
            f"{family} class head does not match the dataset's {num_classes} classes: {'; '.join(problems)}; "
            f"expected {expected} classes per anchor (K + 1, index 0 reserved), channels anchors * {expected}, "
            "and the head's class count updated with its conv (its forward view()s by it); prune with prune_class_head"
        )
