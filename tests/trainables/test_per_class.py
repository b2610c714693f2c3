"""Per-class AP and AR100 from COCOeval's arrays equal pycocotools run on that one category."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from trainables.coco_eval import (
    PER_CLASS_STAT_NAMES,
    build_coco_gt,
    detections_to_coco_results,
    evaluate_detections,
    evaluate_detections_by_class,
)

CATEGORIES = [(3, "cat"), (17, "dog"), (42, "bird"), (90, "ghost")]  # no ghost box in the ground truth
LABEL_TO_ID = {1: 3, 2: 17, 3: 42, 4: 90}


def _data(seed: int):
    """40 images, ~150 boxes of three classes (sizes across COCO's ranges, some crowd), noisy detections."""
    rng = np.random.default_rng(seed)
    records, detections = [], {}
    for image_id in range(1, 41):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 150, (n, 2))
        wh = rng.uniform(4, 110, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, 255)], axis=1)
        cids = rng.choice([3, 17, 42], n)
        crowd = rng.random(n) < 0.08
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        records.append({"image_id": image_id, "width": 256, "height": 256, "eval_xywh": xywh,
                        "eval_category_ids": cids, "eval_iscrowd": crowd, "eval_area": xywh[:, 2] * xywh[:, 3],
                        "eval_difficult": np.zeros(n, dtype=bool)})
        # each box found with a jitter (some missed), plus false positives of every label, ghost included
        keep = rng.random(n) < 0.8
        found = boxes[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        labels = np.array([{3: 1, 17: 2, 42: 3}[c] for c in cids[keep]], dtype=np.int64)
        m = int(rng.integers(0, 4))
        fp_xy = rng.uniform(0, 200, (m, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(5, 50, (m, 2))], axis=1)
        all_boxes = np.concatenate([found, fp]).reshape(-1, 4)
        all_labels = np.concatenate([labels, rng.integers(1, 5, m)])
        detections[image_id] = {"boxes": torch.tensor(all_boxes, dtype=torch.float64),
                                "scores": torch.tensor(rng.uniform(0.05, 1.0, len(all_boxes))),
                                "labels": torch.tensor(all_labels, dtype=torch.int64)}
    return records, detections


def _pycocotools_per_category(gt, detections, category_id: int) -> dict[str, float]:
    """pycocotools itself, restricted to one category with ``params.catIds``."""
    results = detections_to_coco_results(detections, label_to_dataset_id=LABEL_TO_ID)
    coco_eval = COCOeval(gt, gt.loadRes(results), iouType="bbox")
    coco_eval.params.catIds = [category_id]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    s = coco_eval.stats  # AP, AP50, AP75, ..., AR100 at index 8
    return {name: (math.nan if v == -1 else float(v)) for name, v in zip(("AP", "AP50", "AP75", "AR100"),
                                                                          (s[0], s[1], s[2], s[8]), strict=True)}


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_equals_pycocotools_by_category(seed, capsys):
    records, detections = _data(seed)
    gt = build_coco_gt(records, CATEGORIES)
    stats, per_class = evaluate_detections_by_class(gt, detections, label_to_dataset_id=LABEL_TO_ID)
    assert stats == evaluate_detections(gt, detections, label_to_dataset_id=LABEL_TO_ID)
    assert sorted(per_class) == [3, 17, 42, 90]
    for category_id in (3, 17, 42):
        ref = _pycocotools_per_category(gt, detections, category_id)
        for name in PER_CLASS_STAT_NAMES:
            assert per_class[category_id][name] == pytest.approx(ref[name], abs=1e-12), (category_id, name)
        assert 0.0 < per_class[category_id]["AP"] < 1.0  # a real, non-trivial number
    # a category without ground truth has nothing to measure: NaN, as pycocotools' -1
    assert all(math.isnan(per_class[90][name]) for name in PER_CLASS_STAT_NAMES)
    ref = _pycocotools_per_category(gt, detections, 90)
    assert all(math.isnan(v) for v in ref.values())
    # with one category's AP missing the mean over the measured ones is the overall AP
    assert stats["AP"] == pytest.approx(np.mean([per_class[c]["AP"] for c in (3, 17, 42)]), abs=1e-12)


def test_per_class_without_detections_is_zero_where_measurable():
    records, _ = _data(0)
    gt = build_coco_gt(records, CATEGORIES)
    _, per_class = evaluate_detections_by_class(gt, {}, label_to_dataset_id=LABEL_TO_ID)
    assert {c: per_class[c]["AP"] for c in (3, 17, 42)} == {3: 0.0, 17: 0.0, 42: 0.0}
    assert math.isnan(per_class[90]["AR100"])


def test_tensorboard_gets_per_class_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainables.tensorboard import TrialWriter

    writer = TrialWriter(tmp_path, hparams={"lr": 0.01})
    for epoch, ap in ((1, 0.25), (2, 0.5)):
        writer.epoch({"epoch": epoch, "AP": ap, "score": ap + 1e-8, "AP[red panda]": ap / 2, "AR100[red panda]": 0.75,
                      "AP[cat]": math.nan})
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("coco_class/AP/red panda")] == [(1, 0.125), (2, 0.25)]
    assert [s.value for s in events.Scalars("coco_class/AR100/red panda")] == [0.75, 0.75]
    assert math.isnan(events.Scalars("coco_class/AP/cat")[0].value)
    assert [s.value for s in events.Scalars("objective/score")] == pytest.approx([0.25 + 1e-8, 0.5 + 1e-8])
