"""COCO box evaluation of a detector's predictions, done by pycocotools, kept quiet.

The ground truth is built in memory from the dataset's records (no JSON file), in the dataset's
own category ids, from the annotations as the file gives them (float64, in the file's order, boxes
past the edge and zero-size ones included), so the numbers are the ones ``pycocotools`` gives on
the annotation file itself. Detections arrive in the model's contiguous labels (1..K; torchvision
counts background as class 0) and are mapped back to the dataset's ids before evaluation. VOC
``difficult`` objects are ignored, as VOC's own evaluation ignores them (``_DifficultIgnoringEval``).
COCO's AP50 is still not VOC2007's mAP: VOC07 interpolates precision at 11 recall points, COCO at
101.

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

__all__ = ["COCO_STAT_NAMES", "PER_CLASS_STAT_NAMES", "build_coco_gt", "detections_to_coco_results",
           "evaluate_detections", "evaluate_detections_by_class", "evaluate_results", "match_results",
           "per_class_stats", "run_cocoeval", "coco_stats"]

# COCOeval.stats, in its order (maxDets 1/10/100; small < 32^2 px^2 <= medium < 96^2 px^2 <= large).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# per category, from COCOeval's precision and recall arrays (area "all", 100 detections)
PER_CLASS_STAT_NAMES = ("AP", "AP50", "AP75", "AR100")

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
    ``height`` (px) and its evaluation annotations as annotated: ``eval_xywh`` (M, 4)
    [x, y, width, height] px, ``eval_category_ids`` (the dataset's own ids), ``eval_iscrowd``
    (crowd regions are ignore regions for COCOeval), ``eval_area`` (px^2; COCOeval sorts boxes
    into size ranges by it) and ``eval_difficult`` (VOC objects that are neither a hit nor a
    miss). ``categories`` is (dataset id, name).

    The annotations keep the records' order and each record's own order, which is what
    pycocotools reads from a file (it matches and breaks ties in that order), and the numbers go
    in as float64 unchanged, so a dataset read from a COCO file gives the numbers pycocotools
    gives on that file.
    """
    gt_images, annotations = [], []
    for record in images:
        image_id = _plain_id(_field(record, "image_id"))
        gt_images.append(
            {"id": image_id, "width": int(_field(record, "width")), "height": int(_field(record, "height"))}
        )
        xywh = _to_numpy(_field(record, "eval_xywh"), np.float64).reshape(-1, 4)
        per_box = [
            _to_numpy(_field(record, name), dtype).reshape(-1)
            for name, dtype in (
                ("eval_category_ids", np.int64),
                ("eval_iscrowd", bool),
                ("eval_area", np.float64),
                ("eval_difficult", bool),
            )
        ]
        if any(len(values) != len(xywh) for values in per_box):
            lengths = ", ".join(str(len(v)) for v in (xywh, *per_box))
            raise ValueError(
                f"image {image_id}: eval_xywh, eval_category_ids, eval_iscrowd, eval_area and "
                f"eval_difficult differ in length ({lengths})"
            )
        for box, category_id, crowd, box_area, difficult in zip(xywh, *per_box, strict=True):
            annotation = {
                # ids 1, 2, ... in order: COCOeval stores matched ids and reads 0 as "unmatched",
                # and uses them for nothing else, so any unique non-zero ids match alike
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(category_id),
                "bbox": [float(v) for v in box],
                "area": float(box_area),
                "iscrowd": int(crowd),
            }
            if difficult:
                annotation["difficult"] = 1  # not a COCO key: read by _DifficultIgnoringEval
            annotations.append(annotation)
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
    return evaluate_detections_by_class(gt, detections, label_to_dataset_id=label_to_dataset_id)[0]


def evaluate_detections_by_class(
    gt: COCO, detections: Mapping[Any, Mapping[str, Any]], *, label_to_dataset_id: Mapping[int, int]
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """``evaluate_detections``'s stats and ``per_class_stats``, from one COCOeval run."""
    coco_eval = run_cocoeval(gt, detections, label_to_dataset_id=label_to_dataset_id)
    return coco_stats(coco_eval), per_class_stats(coco_eval)


def coco_stats(coco_eval: COCOeval) -> dict[str, float]:
    """A summarised COCOeval's ``stats`` by name (``COCO_STAT_NAMES``), -1 as NaN."""
    return {name: (float("nan") if v == -1 else float(v)) for name, v in zip(COCO_STAT_NAMES, coco_eval.stats, strict=True)}


def run_cocoeval(gt: COCO, detections: Mapping[Any, Mapping[str, Any]], *,
                 label_to_dataset_id: Mapping[int, int]) -> COCOeval:
    """COCOeval evaluated, accumulated and summarised (its ``eval`` arrays and ``stats`` filled): one
    run that ``coco_stats``, ``per_class_stats`` and ``trainables.intervals.ImageMatches`` all read."""
    results = detections_to_coco_results(detections, label_to_dataset_id=label_to_dataset_id)
    return _evaluate_results(gt, results)


def evaluate_results(gt: COCO, results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``evaluate_detections`` for results already in COCO's format (``image_id``, ``category_id``
    in the dataset's ids, ``bbox`` [x, y, w, h] px, ``score``), such as a results JSON file holds.

    The order of ``results`` is kept: pycocotools breaks score ties by it.
    """
    return coco_stats(_evaluate_results(gt, [dict(r) for r in results]))  # loadRes adds keys to each dict


def match_results(gt: COCO, results: list[dict[str, Any]]) -> COCOeval:
    """COCOeval with ``evaluate()`` run: ``results`` matched to ``gt`` per image, not yet accumulated.

    ``results`` are taken as they are (``loadRes`` adds keys to each dict); a detection on an image
    that is not in ``gt`` is a ValueError.
    """
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for images not in the ground truth: {sorted(unknown, key=str)[:10]}")
    with _quiet():
        dt = gt.loadRes(results) if results else _empty_results(gt)
        coco_eval = _DifficultIgnoringEval(gt, dt, iouType="bbox")
        coco_eval.evaluate()
    return coco_eval


def _evaluate_results(gt: COCO, results: list[dict[str, Any]]) -> COCOeval:
    coco_eval = match_results(gt, results)
    with _quiet():
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


class _DifficultIgnoringEval(COCOeval):
    """COCOeval that ignores VOC ``difficult`` objects, as VOC's own evaluation does.

    An ignored object is neither a hit nor a miss: a detection matched to it is not counted, and
    it is not counted as missed when nothing matches it. The base ``_prepare`` sets every
    object's ``ignore`` from ``iscrowd`` alone, so the flag is set after it runs. Marking the
    objects as crowd instead would change their IoU (a crowd's IoU divides by the detection's
    area alone) and let one absorb any number of detections; an ignored object takes one, as
    COCO's own ignored objects do, and a second detection on it is a false positive. Without
    difficult objects this is COCOeval unchanged.
    """

    def _prepare(self) -> None:
        super()._prepare()
        for objects in self._gts.values():
            for gt in objects:
                if gt.get("difficult"):
                    gt["ignore"] = 1


def per_class_stats(coco_eval: COCOeval) -> dict[int, dict[str, float]]:
    """``PER_CLASS_STAT_NAMES`` of every category, read from an accumulated COCOeval's arrays.

    ``eval["precision"]`` is [iou thresholds, recall points, categories, area ranges, max dets] and
    ``eval["recall"]`` the same without recall points; -1 marks "no ground truth". Each number is
    the mean of the entries > -1 at area "all" and 100 detections, as ``summarize`` takes them for
    all categories together, so it equals COCOeval run with ``params.catIds = [that id]``. NaN
    where the category has no ground truth in the evaluated images.
    """
    params = coco_eval.params
    precision, recall = coco_eval.eval["precision"], coco_eval.eval["recall"]
    area = list(params.areaRngLbl).index("all")
    dets = list(params.maxDets).index(100)
    iou = {0.5: _iou_index(params, 0.5), 0.75: _iou_index(params, 0.75)}
    out: dict[int, dict[str, float]] = {}
    for k, category_id in enumerate(params.catIds):
        p = precision[:, :, k, area, dets]
        out[int(category_id)] = {
            "AP": _mean_valid(p),
            "AP50": _mean_valid(p[iou[0.5]]),
            "AP75": _mean_valid(p[iou[0.75]]),
            "AR100": _mean_valid(recall[:, k, area, dets]),
        }
    return out


def _iou_index(params: Any, threshold: float) -> int:
    # the same lookup summarize() does
    return int(np.where(params.iouThrs == threshold)[0][0])


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if len(valid) else float("nan")


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
