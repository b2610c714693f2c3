"""The detectors boxtune fine-tunes: each architecture's family and the model keys the family uses.

An architecture is a torchvision builder name (``torchvision.models.get_model``). Its family is
the detector class that builder returns, which decides the head layout (``trainables.heads`` for
Faster R-CNN, ``trainables.onestage_heads`` for the others), the loss names the trial reports and
which model keys apply. The config schema (``trainables.config``) validates against this
catalogue; it holds no schema of its own.
"""

from __future__ import annotations

from trainables.errors import ConfigError

__all__ = ["ARCHITECTURES", "FAMILIES", "FAMILY_MODEL_KEYS", "SIZED_KEYS", "DEFAULT_SCORE_THRESHOLDS",
           "EVAL_SCORE_THRESHOLD", "family_of"]

ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)
# architecture -> family: the detector class torchvision builds, which decides the head layout,
# the loss names and which model keys apply
FAMILIES: dict[str, str] = {
    "fasterrcnn_resnet50_fpn": "fasterrcnn",
    "fasterrcnn_resnet50_fpn_v2": "fasterrcnn",
    "fasterrcnn_mobilenet_v3_large_fpn": "fasterrcnn",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "fasterrcnn",
    "retinanet_resnet50_fpn": "retinanet",
    "retinanet_resnet50_fpn_v2": "retinanet",
    "fcos_resnet50_fpn": "fcos",
    "ssdlite320_mobilenet_v3_large": "ssd",
}
# The model keys each family's builder uses besides architecture, weights and class_map. SSDlite
# resizes every image to a fixed 320x320 (its builder takes no min_size/max_size), and only the
# Faster R-CNN box head samples RoIs.
FAMILY_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "fasterrcnn": ("min_size", "max_size", "box_batch_size_per_image"),
    "retinanet": ("min_size", "max_size"),
    "fcos": ("min_size", "max_size"),
    "ssd": (),
}
# every key some family uses and another does not: what FAMILY_MODEL_KEYS chooses from
SIZED_KEYS = ("min_size", "max_size", "box_batch_size_per_image")
# The score filter torchvision's builders give each family (Faster R-CNN's box_score_thresh, the
# others' score_thresh): a detection scoring below it never leaves the model, whatever a caller
# filters afterwards. A `.pt` export loaded with torchvision alone has these.
DEFAULT_SCORE_THRESHOLDS: dict[str, float] = {"fasterrcnn": 0.05, "retinanet": 0.05, "fcos": 0.2, "ssd": 0.001}
# The one filter val and test-split evaluation set on every family (SSDlite's own), so that COCO
# AP compares families on equal terms: FCOS's 0.2 would cut its low-recall tail that the others keep.
# Each image still keeps at most the family's detections_per_img (Faster R-CNN and FCOS 100,
# RetinaNet and SSDlite 300), so a low filter costs evaluation a bounded number of boxes.
EVAL_SCORE_THRESHOLD = 0.001


def family_of(architecture: str) -> str:
    """The family ("fasterrcnn", "retinanet", "fcos", "ssd") of a known architecture."""
    try:
        return FAMILIES[architecture]
    except KeyError:
        raise ConfigError(
            f"model.architecture: unknown architecture {architecture!r}; accepted: {', '.join(ARCHITECTURES)}"
        ) from None
