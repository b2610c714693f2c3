"""COCO box evaluation of a detector's predictions, done by pycocotools, kept quiet.

The ground truth is built in memory from the dataset's records (no JSON file), in the dataset's
own category ids, so the numbers are the ones ``pycocotools`` gives for the same data written to
disk. Detections arrive in the model's contiguous labels (1..K; torchvision counts background as
class 0) and are mapped back to the dataset's ids before evaluation.

Stats that pycocotools reports as -1 (no ground-truth object in that size range, or no ground
truth at all) are returned as ``float('nan')``, so "nothing to measure" stays distinguishable from
a measured 0.0. Callers that rank trials should treat NaN as missing, not as a score.
"""

from __future__ import annotations

import contextlib
import io
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["COCO_STAT_NAMES", "build_coco_gt", "detections_to_coco_results", "evaluate_detections"]

# COCOeval.stats, in its order (maxDets 1/10/100; small < 32^2 px^2 <= medium < 96^2 px^2 <= large).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_INFO = {"description": "boxtune ground truth", "version": "1.0"}


def _field(record: Any, name: str) -> Any:
    """Read ``name`` from a mapping (``record[name]``) or any object with that attribute."""
    if isinstance(record, Mapping):
        return record[name]
    return getattr(record, name)


def _to_numpy(values: Any, dtype: Any) -> np.ndarray:
    """A tensor (any device, with or without grad), array or list as a NumPy array."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _plain_id(value: Any) -> Any:
    """NumPy/torch integers as Python ints (pycocotools indexes dicts by id)."""
    if hasattr(value, "item"):
        value = value.item()
    return int(value) if isinstance(value, numbers.Integral) else value


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    # float64 first: the difference of two float32 coordinates is then exact
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def build_coco_gt(images: Iterable[Any], categories: Sequence[tuple[int, str]]) -> COCO:
    """A pycocotools ``COCO`` ground truth built in memory from per-image records.

    Each record (a mapping or an object with these attributes) has ``image_id``, ``width``,
    ``height`` (px), ``boxes`` (N, 4) xyxy px, ``category_ids`` (the dataset's own ids),
    ``iscrowd`` (bool per box; crowd regions are ignore regions for COCOeval) and ``area`` (px^2
    per box; COCOeval sorts boxes into size ranges by it). ``categories`` is (dataset id, name).
    """
    gt_images, annotations = [], []
    for record in images:
        image_id = _plain_id(_field(record, "image_id"))
        gt_images.append(
            {"id": image_id, "width": int(_field(record, "width")), "height": int(_field(record, "height"))}
        )
        xywh = _xyxy_to_xywh(_to_numpy(_field(record, "boxes"), np.float64))
        category_ids = _to_numpy(_field(record, "category_ids"), np.int64).reshape(-1)
        iscrowd = _to_numpy(_field(record, "iscrowd"), bool).reshape(-1)
        area = _to_numpy(_field(record, "area"), np.float64).reshape(-1)
        if not len(xywh) == len(category_ids) == len(iscrowd) == len(area):
            raise ValueError(
                f"image {image_id}: boxes, category_ids, iscrowd and area differ in length "
                f"({len(xywh)}, {len(category_ids)}, {len(iscrowd)}, {len(area)})"
            )
        for box, category_id, crowd, box_area in zip(xywh, category_ids, iscrowd, area, strict=True):
            annotations.append(
                {
                    # ids start at 1: COCOeval stores matched ids and reads 0 as "unmatched"
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [float(v) for v in box],
                    "area": float(box_area),
                    "iscrowd": int(crowd),
                }
            )
    gt = COCO()
    gt.dataset = {
        "info": dict(_INFO),
        "images": gt_images,
        "annotations": annotations,
        "categories": [{"id": int(cid), "name": str(name)} for cid, name in categories],
    }
    with _quiet():
        gt.createIndex()
    return gt


def detections_to_coco_results(
    detections: Mapping[Any, Mapping[str, Any]], *, label_to_dataset_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Detections as COCO results: one dict per box, ``bbox`` as [x, y, w, h] px (float, unrounded).

    ``detections`` maps image id -> {"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)} with
    labels 1..K; ``label_to_dataset_id`` maps each label to the dataset's category id.
    """
    results = []
    for image_id, det in detections.items():
        xywh = _xyxy_to_xywh(_to_numpy(det["boxes"], np.float64))
        scores = _to_numpy(det["scores"], np.float64).reshape(-1)
        labels = _to_numpy(det["labels"], np.int64).reshape(-1)
        if not len(xywh) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: boxes, scores and labels differ in length "
                f"({len(xywh)}, {len(scores)}, {len(labels)})"
            )
        for box, score, label in zip(xywh, scores, labels, strict=True):
            try:
                category_id = label_to_dataset_id[int(label)]
            except (KeyError, IndexError):
                known = sorted(label_to_dataset_id) if isinstance(label_to_dataset_id, Mapping) else "?"
                raise ValueError(
                    f"image {image_id}: label {int(label)} has no dataset category id; known labels: {known}"
                ) from None
            results.append(
                {
                    "image_id": _plain_id(image_id),
                    "category_id": int(category_id),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return results


def evaluate_detections(
    gt: COCO, detections: Mapping[Any, Mapping[str, Any]], *, label_to_dataset_id: Mapping[int, int]
) -> dict[str, float]:
    """COCO bbox stats (``COCO_STAT_NAMES``) of ``detections`` against ``gt``, default COCOeval params.

    Images of ``gt`` missing from ``detections`` count as images with no detections; a detection
    on an image that is not in ``gt`` is a ValueError. Stats pycocotools reports as -1 (nothing of
    that size in the ground truth) are NaN; with no detections at all every measurable stat is 0.0.
    """
    results = detections_to_coco_results(detections, label_to_dataset_id=label_to_dataset_id)
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for images not in the ground truth: {sorted(unknown, key=str)[:10]}")
    with _quiet():
        dt = gt.loadRes(results) if results else _empty_results(gt)
        coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {
        name: (float("nan") if v == -1 else float(v))
        for name, v in zip(COCO_STAT_NAMES, coco_eval.stats, strict=True)
    }


def _empty_results(gt: COCO) -> COCO:
    """What ``loadRes`` builds, for an empty result list (``loadRes`` itself fails on one)."""
    dt = COCO()
    dt.dataset = {
        "info": dict(gt.dataset.get("info", {})),
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": [],
    }
    dt.createIndex()
    return dt


@contextlib.contextmanager
def _quiet():
    """Swallow pycocotools' progress prints (it writes to stdout with print)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
