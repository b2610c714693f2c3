"""Exact numbers: a COCO file read and evaluated by boxtune gives pycocotools' 12 numbers on the
same two JSON files; VOC ``difficult`` objects are neither hits nor misses.

The generated COCO file has the things that used to move the numbers: coordinates float32 cannot
hold (123.456), detections whose IoU lies within 1e-7 of a threshold, crowd regions, areas that
are not width * height, boxes past the image edge and zero-size ones (pycocotools keeps both),
duplicate boxes that differ in area, annotations interleaved across images, non-contiguous
category ids up to 90, and tied scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import pycocotools_stats
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

from trainables.coco_eval import (
    COCO_STAT_NAMES,
    build_coco_gt,
    detections_to_coco_results,
    evaluate_detections,
    evaluate_results,
)
from trainables.data import DetectionDataset, build_manifest, read_manifest
from trainables.errors import DataError

# 61 has no annotation at all: pycocotools leaves it out of the means, and so must we
CATEGORIES = [(1, "person"), (3, "car"), (17, "cat"), (44, "bottle"), (61, "cake"), (90, "toothbrush")]
ANNOTATED_IDS = [1, 3, 17, 44, 90]
IOU_THRESHOLDS = Params(iouType="bbox").iouThrs


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _c(value: float) -> float:
    return round(float(value), 3)  # 123.456: three decimals, which float32 rounds away


def _generate(root: Path, seed: int = 7) -> tuple[Path, Path]:
    """A COCO dataset (tiny solid PNGs + annotations.json) and a results.json for it."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(40):
        image_id = 1000 + 7 * i
        width, height = int(rng.integers(100, 221)), int(rng.integers(80, 181))
        name = f"img_{image_id}.png"
        Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3))).save(root / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        if i == 39:
            continue  # an image without objects
        for _ in range(int(rng.integers(6, 15))):
            w, h = _c(rng.uniform(2, min(width, 130))), _c(rng.uniform(2, min(height, 120)))
            # up to 8 px past the edge on either side
            x, y = _c(rng.uniform(-8, width - w + 8)), _c(rng.uniform(-8, height - h + 8))
            roll = rng.random()
            if roll < 0.05:
                w = 0.0  # zero width: pycocotools keeps it (a miss nothing can match)
            elif roll < 0.08:
                h = 0.0
            crowd = int(rng.random() < 0.05)
            ann = {
                "image_id": image_id,
                "category_id": int(rng.choice(ANNOTATED_IDS)),
                "bbox": [x, y, w, h],
                "area": _c(w * h * rng.uniform(0.45, 0.95)),  # segmentation-derived, not w * h
                "iscrowd": crowd,
            }
            annotations.append(ann)
            if rng.random() < 0.1 and not crowd:  # the same box again, another area
                annotations.append({**ann, "area": _c(rng.uniform(200, 12000))})
    order = rng.permutation(len(annotations))  # interleave the images, as real files do
    annotations = [annotations[k] for k in order]
    for ann, ann_id in zip(annotations, rng.permutation(len(annotations)) + 1, strict=True):
        ann["id"] = int(ann_id)

    scores = np.round(rng.uniform(0.05, 1.0, 4 * len(annotations)), 2).tolist()  # two decimals: ties
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        if ann["iscrowd"]:
            results.append(  # a detection inside the crowd: ignored, not a false positive
                {"image_id": ann["image_id"], "category_id": ann["category_id"],
                 "bbox": [_c(x + w / 4), _c(y + h / 4), _c(w / 3), _c(h / 3)], "score": scores.pop()}
            )  # fmt: skip
            continue
        roll = rng.random()
        category = ann["category_id"] if rng.random() < 0.9 else int(rng.choice(ANNOTATED_IDS))
        if roll < 0.2 and w > 5 and h > 0:
            # IoU = t (1 + u 1e-7): float32's rounding of the ground truth moves it across t
            t = float(rng.choice(IOU_THRESHOLDS[:-1]))
            box = [x, y, w * t * (1 + rng.uniform(-1e-7, 1e-7)), h]
        elif roll < 0.85:
            box = [_c(x + rng.normal(0, 0.04 * w + 0.5)), _c(y + rng.normal(0, 0.04 * h + 0.5)),
                   _c(w * rng.uniform(0.85, 1.15)), _c(h * rng.uniform(0.85, 1.15))]  # fmt: skip
        else:
            continue  # missed
        score = scores.pop()
        results.append({"image_id": ann["image_id"], "category_id": category, "bbox": box, "score": score})
        if rng.random() < 0.15:  # a looser duplicate with the same score: the results order decides
            loose = [_c(box[0] + 0.2 * w), box[1], box[2], box[3]]
            results.append(
                {"image_id": ann["image_id"], "category_id": category, "bbox": loose, "score": score}
            )
    for _ in range(80):  # false positives, some on the image without objects
        image = images[int(rng.integers(0, len(images)))]
        w, h = _c(rng.uniform(4, 60)), _c(rng.uniform(4, 60))
        results.append(
            {"image_id": image["id"], "category_id": int(rng.choice(ANNOTATED_IDS)),
             "bbox": [_c(rng.uniform(0, image["width"] - w)), _c(rng.uniform(0, image["height"] - h)), w, h],
             "score": scores.pop()}
        )  # fmt: skip
    order = rng.permutation(len(results))
    results = [results[k] for k in order]

    gt_file, res_file = root / "annotations.json", root / "results.json"
    categories = [{"id": cid, "name": name} for cid, name in CATEGORIES]
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    res_file.write_text(json.dumps(results))
    return gt_file, res_file


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory) -> tuple[Path, Path]:
    return _generate(tmp_path_factory.mktemp("exact"))


@pytest.fixture(scope="module")
def manifest(coco_files, tmp_path_factory):
    """The generated dataset through build -> Parquet -> read, as a sweep reads it."""
    path = build_manifest(coco_files[0], val_fraction=0).write(tmp_path_factory.mktemp("m") / "m.parquet")
    return read_manifest(path)


def _gt(manifest) -> COCO:
    return build_coco_gt(manifest.records(), [(c.dataset_id, c.name) for c in manifest.classes])


def _assert_stats_equal(ours: dict, reference: list[float]) -> None:
    assert list(ours) == list(COCO_STAT_NAMES)
    for name, ref in zip(COCO_STAT_NAMES, reference, strict=True):
        assert ref != -1, name  # every size range is populated: each number is measured
        assert abs(ours[name] - ref) <= 1e-12, (name, ours[name], ref)


def test_generated_data_has_what_moves_the_numbers(coco_files, manifest):
    data = json.loads(coco_files[0].read_text())
    anns = data["annotations"]
    assert len(anns) >= 300
    assert sum(a["iscrowd"] for a in anns) >= 5
    assert all(a["area"] != a["bbox"][2] * a["bbox"][3] for a in anns if a["bbox"][2] * a["bbox"][3] > 0)
    assert sum(float(np.float32(v)) != v for a in anns for v in a["bbox"]) > 1000
    assert max(a["category_id"] for a in anns) == 90
    repairs = manifest.summary.repairs
    assert repairs["box clipped to the image edge"] >= 20
    assert repairs["box with zero or negative width or height dropped"] >= 10
    results = json.loads(coco_files[1].read_text())
    assert len({r["score"] for r in results}) < len(results) / 3  # many ties


def test_coco_file_gives_pycocotools_numbers_to_1e12(coco_files, manifest):
    gt_file, res_file = coco_files
    reference = pycocotools_stats(gt_file, res_file)
    ours = evaluate_results(_gt(manifest), json.loads(res_file.read_text()))
    _assert_stats_equal(ours, reference)
    assert 0.2 < ours["AP"] < 0.8  # hits, misses and false positives all count


def test_float32_coordinates_would_not_match(coco_files, manifest):
    """What the manifest used to do: float32 xyxy, xywh rebuilt from it. The data notices."""
    gt_file, res_file = coco_files
    records = []
    for r in manifest.records():
        xyxy = np.concatenate([r.eval_xywh[:, :2], r.eval_xywh[:, :2] + r.eval_xywh[:, 2:]], axis=1)
        xyxy = xyxy.astype(np.float32).astype(np.float64)
        records.append(
            dataclasses.replace(r, eval_xywh=np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1))
        )
    gt = build_coco_gt(records, [(c.dataset_id, c.name) for c in manifest.classes])
    ours = evaluate_results(gt, json.loads(res_file.read_text()))
    reference = pycocotools_stats(gt_file, res_file)
    assert max(abs(ours[n] - ref) for n, ref in zip(COCO_STAT_NAMES, reference, strict=True)) > 1e-5


def test_ground_truth_keeps_the_files_numbers_and_order(coco_files, manifest):
    theirs, ours = _quiet_coco(coco_files[0]), _gt(manifest)
    assert sorted(ours.getImgIds()) == sorted(theirs.getImgIds())
    assert sorted(ours.getCatIds()) == sorted(theirs.getCatIds())

    def per_image(coco: COCO, image_id: int) -> list:
        return [(a["bbox"], a["area"], a["iscrowd"], a["category_id"]) for a in coco.imgToAnns[image_id]]

    for image_id in theirs.getImgIds():
        # == on floats: the very same float64 values, in the file's order within the image
        assert per_image(ours, image_id) == per_image(theirs, image_id), image_id


def test_model_detections_evaluate_as_their_results_file(coco_files, manifest, tmp_path):
    """float32 model output -> our results list -> a JSON file pycocotools reads: the same numbers."""
    dataset_to_label = {c.dataset_id: c.label for c in manifest.classes}
    detections: dict[int, dict] = {}
    for r in json.loads(coco_files[1].read_text()):
        x, y, w, h = r["bbox"]
        d = detections.setdefault(r["image_id"], {"boxes": [], "scores": [], "labels": []})
        d["boxes"].append([x, y, x + w, y + h])
        d["scores"].append(r["score"])
        d["labels"].append(dataset_to_label[r["category_id"]])
    detections = {
        image_id: {"boxes": torch.tensor(d["boxes"], dtype=torch.float32), "scores": torch.tensor(d["scores"]),
                   "labels": torch.tensor(d["labels"])}
        for image_id, d in detections.items()
    }  # fmt: skip
    mapping = manifest.label_to_dataset_id
    results = detections_to_coco_results(detections, label_to_dataset_id=mapping)
    res_file = tmp_path / "ours.json"
    res_file.write_text(json.dumps(results))
    ours = evaluate_detections(_gt(manifest), detections, label_to_dataset_id=mapping)
    _assert_stats_equal(ours, pycocotools_stats(coco_files[0], res_file))


def test_training_boxes_repaired_evaluation_as_annotated(tmp_path):
    Image.new("RGB", (64, 48), (9, 9, 9)).save(tmp_path / "a.png")
    anns = [
        {"id": 5, "image_id": 1, "category_id": 90, "bbox": [50.125, 40.5, 20.25, 10.0], "area": 100.5, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10.1, 10.2, 0, 5.3], "area": 0.0, "iscrowd": 0},
        {"id": 9, "image_id": 1, "category_id": 3, "bbox": [1.1, 2.2, 3.3, 4.4], "iscrowd": 0},
    ]  # fmt: skip
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}], "annotations": anns,
            "categories": [{"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(data))
    m = build_manifest(tmp_path / "d.json", val_fraction=0)
    path = m.write(tmp_path / "m.parquet")
    (record,) = read_manifest(path).records()
    # training: clipped at the edge, the zero-width box dropped
    assert record.boxes.dtype == np.float64
    assert record.boxes.tolist() == [[50.125, 40.5, 64.0, 48.0], [1.1, 2.2, 1.1 + 3.3, 2.2 + 4.4]]
    assert record.labels.tolist() == [2, 1] and record.area.tolist() == [
        100.5,
        (1.1 + 3.3 - 1.1) * (2.2 + 4.4 - 2.2),
    ]
    _, target = DetectionDataset([record])[0]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    # evaluation: the file's own numbers, all three, in the file's order
    assert record.eval_xywh.tolist() == [a["bbox"] for a in anns]
    assert record.eval_area.tolist() == [100.5, 0.0, 3.3 * 4.4]  # no area given: w * h as written
    assert record.eval_category_ids.tolist() == [90, 3, 3]
    assert record.eval_iscrowd.tolist() == [False] * 3 and record.eval_difficult.tolist() == [False] * 3
    assert m.summary.repairs == {
        "box clipped to the image edge": 1,
        "box with zero or negative width or height dropped": 1,
    }


def test_exif_rotated_evaluation_boxes_keep_their_width_and_height(tmp_path):
    raw = Image.new("RGB", (64, 40), (128, 128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise
    raw.save(tmp_path / "a.jpg", quality=95, exif=exif)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 40}],  # raw pixels
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8.1, 4.3, 15.7, 9.9], "area": 50.0}],
            "categories": [{"id": 1, "name": "dog"}]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(data))
    (record,) = build_manifest(tmp_path / "d.json", val_fraction=0).records()
    assert (record.width, record.height) == (40, 64)
    # (x, y) -> (h - y, x): the displayed box starts at (40 - (4.3 + 9.9), 8.1) and is 9.9 x 15.7
    assert record.eval_xywh.tolist() == [[40 - (4.3 + 9.9), 8.1, 9.9, 15.7]]
    np.testing.assert_allclose(record.boxes, [[40 - (4.3 + 9.9), 8.1, 40 - 4.3, 8.1 + 15.7]])


def test_old_manifest_is_a_data_error_asking_to_rebuild(manifest, tmp_path):
    table = manifest.table
    meta = json.loads(table.schema.metadata[b"boxtune"])
    meta["version"] = 1
    pq.write_table(
        table.replace_schema_metadata({b"boxtune": json.dumps(meta).encode()}), tmp_path / "old.parquet"
    )
    with pytest.raises(DataError, match=r"old\.parquet: manifest version 1 .* rebuild it"):
        read_manifest(tmp_path / "old.parquet")
    assert pa.types.is_float64(table.schema.field("eval_xywh").type.value_type)


# --- VOC difficult ---------------------------------------------------------------------------


def _voc(root: Path, objects: list[tuple[str, tuple, str]]) -> Path:
    """One 128 x 128 image and its XML; objects are (name, (xmin, ymin, xmax, ymax), difficult text)."""
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (128, 128), (60, 60, 60)).save(root / "a.png")
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
        for n, (a, b, c, e), d in objects
    )
    (root / "a.xml").write_text(
        f"<annotation><filename>a.png</filename><size><width>128</width><height>128</height></size>{objs}</annotation>"
    )
    return root


def test_voc_difficult_is_read_kept_for_training_and_marked_for_evaluation(tmp_path):
    root = _voc(tmp_path / "voc", [("dog", (10, 10, 50, 50), "0"), ("dog", (60, 60, 100, 100), "1"),
                                   ("cat", (5, 70, 30, 120), "")])  # fmt: skip
    path = build_manifest(root, val_fraction=0).write(tmp_path / "m.parquet")
    manifest = read_manifest(path)
    (record,) = manifest.records()
    assert record.eval_difficult.tolist() == [False, True, False]
    assert record.labels.tolist() == [2, 2, 1]  # difficult objects train like any other
    assert record.eval_xywh.tolist() == [[10, 10, 40, 40], [60, 60, 40, 40], [5, 70, 25, 50]]
    gt = _gt(manifest)
    assert [a.get("difficult", 0) for a in gt.dataset["annotations"]] == [0, 1, 0]


def test_voc_bad_difficult_value_names_file_and_object(tmp_path):
    root = _voc(tmp_path / "voc", [("dog", (10, 10, 50, 50), "yes")])
    with pytest.raises(
        DataError, match=r"a\.xml: object 1 \('dog'\): <difficult> should be 0 or 1, got 'yes'"
    ):
        build_manifest(root, val_fraction=0)


def _record(objects: list[tuple[tuple, str]]) -> dict:
    """One 256 x 256 image; objects are (xyxy, kind) with kind "", "difficult" or "crowd"; class 1."""
    xywh = np.array([(x1, y1, x2 - x1, y2 - y1) for (x1, y1, x2, y2), _ in objects], np.float64).reshape(
        -1, 4
    )
    return {
        "image_id": 1, "width": 256, "height": 256, "eval_xywh": xywh,
        "eval_category_ids": np.ones(len(objects), np.int64), "eval_area": xywh[:, 2] * xywh[:, 3],
        "eval_iscrowd": np.array([k == "crowd" for _, k in objects], bool),
        "eval_difficult": np.array([k == "difficult" for _, k in objects], bool),
    }  # fmt: skip


def _evaluate(objects, detections) -> dict[str, float]:
    gt = build_coco_gt([_record(objects)], [(1, "dog")])
    dets = {1: {"boxes": torch.tensor([b for b, _ in detections], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([s for _, s in detections]), "labels": torch.ones(len(detections), dtype=torch.int64)}}  # fmt: skip
    return evaluate_detections(gt, dets, label_to_dataset_id={1: 1})


def _same(a: dict, b: dict, but: tuple[str, ...] = ()) -> bool:
    return all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in COCO_STAT_NAMES if k not in but)


A, B, D = (10, 10, 50, 50), (60, 10, 100, 50), (20, 70, 130, 170)  # two medium objects, one large


def test_detection_on_a_difficult_object_changes_nothing():
    # A found, B missed, and the most confident detection is on the difficult object D
    with_d = _evaluate([(A, ""), (B, ""), (D, "difficult")], [(D, 0.95), (A, 0.9)])
    without_d = _evaluate([(A, ""), (B, "")], [(A, 0.9)])
    # AR1 allows one detection per image, and the one on D takes it, as one in a crowd would
    assert _same(with_d, without_d, but=("AR1",))
    assert with_d["AR1"] == 0.0 and without_d["AR1"] == 0.5
    assert with_d["AR100"] == pytest.approx(0.5) and with_d["AP"] == pytest.approx(51 / 101)
    counted = _evaluate([(A, ""), (B, ""), (D, "")], [(D, 0.95), (A, 0.9)])  # were D ordinary
    assert counted["AR100"] == pytest.approx(2 / 3)


def test_missed_difficult_object_is_not_a_miss():
    stats = _evaluate([(A, ""), (D, "difficult")], [(A, 0.9)])
    assert stats["AR100"] == 1.0 and stats["AP"] == pytest.approx(1.0)
    assert _same(stats, _evaluate([(A, "")], [(A, 0.9)]))
    assert np.isnan(stats["APl"])  # the only large object is difficult: nothing large to measure
    assert _evaluate([(A, ""), (D, "")], [(A, 0.9)])["AR100"] == 0.5  # were D ordinary


def test_difficult_is_not_crowd():
    """A detection covering 5/8 of a difficult object: ordinary IoU 0.625, so it is ignored up to
    the 0.6 threshold and a false positive above it. A crowd would have taken it at every one
    (a crowd's IoU divides by the detection's area only)."""
    inside = (20, 70, 88.75, 170)  # 68.75 of D's 110 px width: IoU 0.625 exactly
    detections = [(inside, 0.95), (A, 0.9)]
    difficult = _evaluate([(A, ""), (D, "difficult")], detections)
    assert difficult["AP50"] == pytest.approx(1.0) and difficult["AP75"] == pytest.approx(0.5)
    assert difficult["AP"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10)  # thresholds 0.5 to 0.95
    crowd = _evaluate([(A, ""), (D, "crowd")], detections)
    assert crowd["AP"] == pytest.approx(1.0)
