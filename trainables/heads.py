"""The box predictor cut from COCO's 91 rows down to the dataset's K classes, and its sanity check.

torchvision's Faster R-CNN box predictor is two linear layers fed the same 1024-d RoI feature:
``cls_score`` with one row per class (row 0 is background) and ``bbox_pred`` with four rows per
class (rows 4c..4c+3 are the dx, dy, dw, dh regression for class c). Pruning keeps, for each
dataset class, the COCO class's score row *and* its four box rows, so a class that starts from
"bear" scores like a bear and places boxes like one. A predictor whose ``bbox_pred`` keeps 91
classes while ``cls_score`` has K+1 runs without any error in torchvision, which then pairs the
score of class c with the box regression of COCO class c: ``check_predictor`` refuses it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from trainables.errors import ConfigError, TrainingError

__all__ = ["COCO_CATEGORIES", "coco_label", "prune_box_predictor", "check_predictor"]

# Index = the label torchvision's COCO-trained detectors predict (91 rows). "__background__" is
# row 0 and "N/A" marks ids the COCO paper defined but never annotated; neither is a category.
COCO_CATEGORIES: tuple[str, ...] = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
_PLACEHOLDERS = frozenset({"__background__", "N/A"})
_REAL_NAMES = [name for name in COCO_CATEGORIES if name not in _PLACEHOLDERS]


def coco_label(name: str) -> int:
    """The COCO head row (label) of category ``name``, e.g. ``coco_label("person") == 1``.

    Raises ConfigError for an unknown name or a placeholder, naming the closest categories.
    """
    if name in COCO_CATEGORIES and name not in _PLACEHOLDERS:
        return COCO_CATEGORIES.index(name)
    if name in _PLACEHOLDERS:
        raise ConfigError(
            f"model.class_map: {name!r} is a placeholder row of the COCO head, not a category; "
            "map the class to a COCO category name or to null (fresh initialisation)"
        )
    lowered = {n.lower(): n for n in _REAL_NAMES}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=3, cutoff=0.6)
    hint = f"closest: {', '.join(repr(lowered[c]) for c in close)}" if close else "no close name"
    raise ConfigError(
        f"model.class_map: unknown COCO category {name!r} ({hint}); "
        f"accepted: the {len(_REAL_NAMES)} names of torchvision's COCO_V1 weights meta['categories']"
    )


def prune_box_predictor(predictor: nn.Module, source_rows: Sequence[int | None]) -> FastRCNNPredictor:
    """A new K+1-class predictor whose rows are copied from ``predictor``'s where a source is given.

    ``source_rows[k]`` is the source class (row) for new class k, ``len(source_rows) == K + 1``;
    ``source_rows[0]`` must be 0 (background is always copied). ``None`` keeps the new layer's
    fresh initialisation for that class. Both ``cls_score`` rows and the four ``bbox_pred`` rows
    of each class are copied, so every score stays paired with its own box regression.
    """
    cls_score, bbox_pred = _layers(predictor)
    num_source = cls_score.out_features
    if len(source_rows) < 2:
        raise ValueError(f"source_rows needs background plus at least one class, got {list(source_rows)}")
    if source_rows[0] != 0:
        raise ValueError(f"source_rows[0] must be 0 (background), got {source_rows[0]}")
    bad = [r for r in source_rows if r is not None and not 0 <= r < num_source]
    if bad:
        raise ValueError(f"source rows {bad} out of range for a {num_source}-class predictor")

    pruned = FastRCNNPredictor(cls_score.in_features, len(source_rows))
    pruned.to(device=cls_score.weight.device, dtype=cls_score.weight.dtype)
    with torch.no_grad():
        for new, src in enumerate(source_rows):
            if src is None:
                continue
            pruned.cls_score.weight[new] = cls_score.weight[src]
            pruned.cls_score.bias[new] = cls_score.bias[src]
            # four regression rows per class: (dx, dy, dw, dh) at rows 4c .. 4c+3
            pruned.bbox_pred.weight[4 * new : 4 * new + 4] = bbox_pred.weight[4 * src : 4 * src + 4]
            pruned.bbox_pred.bias[4 * new : 4 * new + 4] = bbox_pred.bias[4 * src : 4 * src + 4]
    return pruned


def check_predictor(model: nn.Module, num_classes: int) -> None:
    """Raise TrainingError unless the box predictor scores and regresses exactly ``num_classes`` + 1.

    ``num_classes`` is the dataset's K (background not counted).
    """
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if predictor is None:
        raise TrainingError("model has no roi_heads.box_predictor; expected a torchvision Faster R-CNN")
    cls_score, bbox_pred = _layers(predictor)
    expected = num_classes + 1  # torchvision counts background as class 0
    if cls_score.out_features != expected or bbox_pred.out_features != 4 * expected:
        raise TrainingError(
            f"box predictor does not match the dataset's {num_classes} classes: cls_score has "
            f"{cls_score.out_features} outputs and bbox_pred {bbox_pred.out_features}, expected "
            f"{expected} and {4 * expected} (K+1 scores, 4 box deltas per score). A bbox_pred left "
            f"with {bbox_pred.out_features // 4} classes is accepted by torchvision, which then pairs "
            "each class's score with another class's box regression; prune both layers together "
            "(prune_box_predictor)"
        )


def _layers(predictor: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    cls_score = getattr(predictor, "cls_score", None)
    bbox_pred = getattr(predictor, "bbox_pred", None)
    if not isinstance(cls_score, nn.Linear) or not isinstance(bbox_pred, nn.Linear):
        raise TrainingError(
            f"box predictor {type(predictor).__name__} lacks the cls_score/bbox_pred linear layers "
            "of torchvision's FastRCNNPredictor"
        )
    return cls_score, bbox_pred
