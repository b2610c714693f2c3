"""COCO evaluation: the in-memory path gives pycocotools' own numbers, in the dataset's ids, quietly."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import pycocotools_stats

from trainables.coco_eval import (
    COCO_STAT_NAMES,
    build_coco_gt,
    detections_to_coco_results,
    evaluate_detections,
)

# The dataset's own category ids are deliberately not 1..K.
CATEGORIES = [(3, "cat"), (17, "dog"), (90, "bird")]
LABEL_TO_ID = {1: 3, 2: 17, 3: 90}  # model label (1..K) -> dataset id

# image id -> list of (xyxy, dataset category id, iscrowd). Coordinates are exact in binary so
# xyxy -> xywh loses nothing. Sizes: small < 32^2 px^2 <= medium < 96^2 <= large.
GT_BOXES = {
    1: [((10, 10, 60, 60), 3, False), ((70, 70, 90, 90), 17, False)],  # medium cat, small dog
    2: [((8, 8, 112, 112), 90, False), ((0, 100, 16, 116), 3, False)],  # large bird, small cat
    3: [((20, 30, 80, 70), 17, False), ((64.5, 10.5, 100.5, 40.5), 3, False)],  # medium dog, medium cat
}
ID_TO_LABEL = {v: k for k, v in LABEL_TO_ID.items()}


@dataclass
class _Record:
    """Stands in for the manifest's per-image record (attributes, not keys): its evaluation view."""

    image_id: int
    width: int
    height: int
    eval_xywh: np.ndarray
    eval_category_ids: np.ndarray
    eval_iscrowd: np.ndarray
    eval_area: np.ndarray
    eval_difficult: np.ndarray


def _records(gt_boxes: dict, as_dict: bool = False) -> list:
    out = []
    for image_id, boxes in gt_boxes.items():
        xyxy = np.array([b for b, _, _ in boxes], dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        rec = _Record(
            image_id=image_id,
            width=128,
            height=128,
            eval_xywh=xywh,
            eval_category_ids=np.array([c for _, c, _ in boxes], dtype=np.int64),
            eval_iscrowd=np.array([z for _, _, z in boxes], dtype=bool),
            eval_area=xywh[:, 2] * xywh[:, 3],
            eval_difficult=np.zeros(len(boxes), dtype=bool),
        )
        out.append(rec.__dict__ if as_dict else rec)
    return out


def _perfect(gt_boxes: dict = GT_BOXES) -> dict:
    dets = {}
    for image_id, boxes in gt_boxes.items():
        dets[image_id] = {
            "boxes": torch.tensor([b for b, _, _ in boxes], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.linspace(0.9, 0.8, len(boxes)),
            "labels": torch.tensor([ID_TO_LABEL[c] for _, c, _ in boxes], dtype=torch.int64),
        }
    return dets


def _append(dets: dict, image_id: int, box, score: float, label: int) -> None:
    d = dets.setdefault(
        image_id,
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    )
    d["boxes"] = torch.cat([d["boxes"], torch.tensor([box], dtype=torch.float32)])
    d["scores"] = torch.cat([d["scores"], torch.tensor([score])])
    d["labels"] = torch.cat([d["labels"], torch.tensor([label])])


def _reference(tmp_path, gt_boxes: dict, dets: dict, label_to_id=LABEL_TO_ID) -> list[float]:
    """pycocotools straight from JSON files: COCO(file), loadRes(file), COCOeval."""
    images, anns = [], []
    for image_id, boxes in gt_boxes.items():
        images.append({"id": image_id, "width": 128, "height": 128})
        for (x1, y1, x2, y2), cid, crowd in boxes:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cid,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd),
                }
            )
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(
        json.dumps(
            {
                "info": {},
                "images": images,
                "annotations": anns,
                "categories": [{"id": i, "name": n} for i, n in CATEGORIES],
            }
        )
    )
    results = []
    for image_id, d in dets.items():
        for (x1, y1, x2, y2), s, lab in zip(
            d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": label_to_id[lab],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    res_file.write_text(json.dumps(results))
    return pycocotools_stats(gt_file, res_file)


def _assert_same(ours: dict, reference: list[float]) -> None:
    assert list(ours) == list(COCO_STAT_NAMES)
    for name, ref in zip(COCO_STAT_NAMES, reference, strict=True):
        if ref == -1:
            assert math.isnan(ours[name]), name
        else:
            assert ours[name] == ref, (name, ours[name], ref)


def _shifted(d):
    d[1]["boxes"][0] += torch.tensor([12.0, 0.0, 12.0, 0.0])  # IoU 1900/3100 = 0.61


def _lower_scores_and_fp(d):
    d[3]["scores"][:] = torch.tensor([0.3, 0.2])
    _append(d, 3, (0, 0, 30, 30), 0.95, 2)  # a confident false dog ranks above the true one


def _missing(d):
    del d[2]  # the large bird and the small cat are never found


def _false_positive(d):
    _append(d, 1, (90, 10, 120, 40), 0.99, 1)


def _duplicate(d):
    # a second box on the first cat, ranked above it: one of the two is a false positive that
    # outranks the other cats
    _append(d, 1, (10, 10, 60, 60), 0.95, 1)


def _wrong_class(d):
    d[3]["labels"][0] = 3  # the medium dog called a bird


@pytest.mark.parametrize(
    "perturb", [_shifted, _lower_scores_and_fp, _missing, _false_positive, _duplicate, _wrong_class]
)
def test_perturbed_detections_match_pycocotools_on_files(tmp_path, perturb):
    dets = _perfect()
    perturb(dets)
    ours = evaluate_detections(
        build_coco_gt(_records(GT_BOXES), CATEGORIES), dets, label_to_dataset_id=LABEL_TO_ID
    )
    _assert_same(ours, _reference(tmp_path, GT_BOXES, dets))
    assert ours["AP"] < 1.0  # the perturbation matters


def test_perfect_detections_score_one():
    stats = evaluate_detections(
        build_coco_gt(_records(GT_BOXES), CATEGORIES), _perfect(), label_to_dataset_id=LABEL_TO_ID
    )
    for name in ("AP", "AP50", "AP75", "AR100", "APs", "APm", "APl"):
        assert stats[name] == pytest.approx(1.0), name
    # maxDets counts per image and class: no image holds two objects of one class
    assert stats["AR1"] == pytest.approx(1.0)


def test_missing_detection_known_values(tmp_path):
    dets = _perfect()
    del dets[2]
    stats = evaluate_detections(
        build_coco_gt(_records(GT_BOXES), CATEGORIES), dets, label_to_dataset_id=LABEL_TO_ID
    )
    # bird: its only object is missed (AP 0); cat: 2 of 3 found at precision 1 (AP 0.67 on the
    # 101-point grid: recall 0..0.6667 -> 67 points of 101); dog: both found (AP 1).
    assert stats["AP"] == pytest.approx((0.0 + 67 / 101 + 1.0) / 3)
    assert stats["AR100"] == pytest.approx((0.0 + 2 / 3 + 1.0) / 3)
    assert stats["APl"] == 0.0  # the only large object (the bird) is missed: a real zero


def test_absent_image_equals_image_without_detections(tmp_path):
    gt = build_coco_gt(_records(GT_BOXES), CATEGORIES)
    absent = _perfect()
    del absent[3]
    empty = _perfect()
    empty[3] = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    a = evaluate_detections(gt, absent, label_to_dataset_id=LABEL_TO_ID)
    b = evaluate_detections(gt, empty, label_to_dataset_id=LABEL_TO_ID)
    assert a == b
    _assert_same(a, _reference(tmp_path, GT_BOXES, absent))
    assert a["AR100"] < 1.0


def test_detections_on_images_without_ground_truth_lower_precision(tmp_path):
    gt_boxes = {**GT_BOXES, 4: []}  # an image with no objects
    dets = _perfect(gt_boxes)
    _append(dets, 4, (10, 10, 60, 60), 0.95, 1)  # confident cat where there is none
    stats = evaluate_detections(
        build_coco_gt(_records(gt_boxes), CATEGORIES), dets, label_to_dataset_id=LABEL_TO_ID
    )
    _assert_same(stats, _reference(tmp_path, gt_boxes, dets))
    assert stats["AP"] < 1.0
    assert stats["AR100"] == pytest.approx(1.0)  # recall is untouched


def test_dataset_ids_3_17_90_and_swapped_mapping(tmp_path):
    gt = build_coco_gt(_records(GT_BOXES), CATEGORIES)
    assert sorted(gt.getCatIds()) == [3, 17, 90]
    assert evaluate_detections(gt, _perfect(), label_to_dataset_id=LABEL_TO_ID)["AP"] == pytest.approx(1.0)
    swapped = {1: 17, 2: 3, 3: 90}  # cats reported as dogs and dogs as cats
    stats = evaluate_detections(gt, _perfect(), label_to_dataset_id=swapped)
    _assert_same(stats, _reference(tmp_path, GT_BOXES, _perfect(), label_to_id=swapped))
    assert stats["AP"] == pytest.approx(1 / 3)  # only the bird is right


def test_size_range_without_objects_is_nan_not_zero(tmp_path):
    gt_boxes = {1: [((10, 10, 20, 20), 3, False), ((30, 30, 80, 80), 17, False)]}  # small + medium, no large
    gt = build_coco_gt(_records(gt_boxes), CATEGORIES)
    dets = _perfect(gt_boxes)
    stats = evaluate_detections(gt, dets, label_to_dataset_id=LABEL_TO_ID)
    assert math.isnan(stats["APl"]) and math.isnan(stats["ARl"])
    assert stats["APs"] == pytest.approx(1.0) and stats["APm"] == pytest.approx(1.0)
    del dets[1]
    _append(dets, 1, (10, 10, 20, 20), 0.9, 1)  # the medium dog is missed
    stats = evaluate_detections(gt, dets, label_to_dataset_id=LABEL_TO_ID)
    assert stats["APm"] == 0.0 and stats["ARm"] == 0.0  # measured and zero
    assert math.isnan(stats["APl"])
    _assert_same(stats, _reference(tmp_path, gt_boxes, dets))


@pytest.mark.parametrize(
    "dets", [{}, {1: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}}]
)
def test_no_detections_at_all_scores_zero(dets):
    stats = evaluate_detections(
        build_coco_gt(_records(GT_BOXES), CATEGORIES), dets, label_to_dataset_id=LABEL_TO_ID
    )
    assert all(v == 0.0 for v in stats.values()), stats


def test_crowd_region_is_ignored(tmp_path):
    gt_boxes = copy.deepcopy(GT_BOXES)
    gt_boxes[1].append(((0, 0, 128, 128), 17, True))  # a crowd of dogs over image 1
    dets = _perfect()
    _append(dets, 1, (0, 0, 64, 128), 0.99, 2)  # inside the crowd: ignored, not a false positive
    stats = evaluate_detections(
        build_coco_gt(_records(gt_boxes), CATEGORIES), dets, label_to_dataset_id=LABEL_TO_ID
    )
    _assert_same(stats, _reference(tmp_path, gt_boxes, dets))
    assert stats["AP"] == pytest.approx(1.0)


def test_nothing_printed(capsys):
    gt = build_coco_gt(_records(GT_BOXES, as_dict=True), CATEGORIES)
    evaluate_detections(gt, _perfect(), label_to_dataset_id=LABEL_TO_ID)
    evaluate_detections(gt, {}, label_to_dataset_id=LABEL_TO_ID)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_ground_truth_from_dicts_and_records_agree():
    a = build_coco_gt(_records(GT_BOXES), CATEGORIES)
    b = build_coco_gt(_records(GT_BOXES, as_dict=True), CATEGORIES)
    assert a.dataset == b.dataset
    assert "info" in a.dataset
    anns = a.dataset["annotations"]
    assert [x["id"] for x in anns] == list(range(1, 7))  # COCOeval reads id 0 as unmatched
    assert anns[5] == {
        "id": 6,
        "image_id": 3,
        "category_id": 3,
        "bbox": [64.5, 10.5, 36.0, 30.0],
        "area": 1080.0,
        "iscrowd": 0,
    }


def test_results_format():
    dets = {
        7: {
            "boxes": torch.tensor([[1.5, 2.0, 11.25, 22.0]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([3]),
        }
    }
    assert detections_to_coco_results(dets, label_to_dataset_id=LABEL_TO_ID) == [
        {"image_id": 7, "category_id": 90, "bbox": [1.5, 2.0, 9.75, 20.0], "score": 0.5}
    ]
    with pytest.raises(ValueError, match="label 3 has no dataset category id"):
        detections_to_coco_results(dets, label_to_dataset_id={1: 3, 2: 17})


def test_detection_on_unknown_image_is_an_error():
    dets = {
        99: {
            "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]),
        }
    }
    with pytest.raises(ValueError, match=r"not in the ground truth: \[99\]"):
        evaluate_detections(
            build_coco_gt(_records(GT_BOXES), CATEGORIES), dets, label_to_dataset_id=LABEL_TO_ID
        )
