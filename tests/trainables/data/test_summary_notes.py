"""What the data summary says although nothing is broken, on exports shaped like the tools' own.

* YOLO polygon labels (an Ultralytics segmentation export) turned into boxes are counted;
* classes a CVAT COCO export declares but no box uses are counted, with the ``data.classes`` that
  keeps the used ones;
* Roboflow's per-file image ids (each of ``train/ valid/ test/`` counts from 0), renumbered so that
  they stay apart, are not a repair.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from trainables.data import build_manifest, summarize

W, H = 40, 30  # px
POLYGON = "polygon label converted to its bounding box"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (90, 120, 150)).save(path)


def test_yolo_polygon_labels_are_counted_as_converted(tmp_path):
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [leaf, stem]\n")
    labels = {
        "images/train/a.jpg": "0 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n1 0.5 0.5 0.2 0.2\n",  # a polygon, a box
        "images/train/b.jpg": "1 0.2 0.2 0.8 0.2 0.8 0.9\n0 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n",  # two polygons
        "images/val/c.jpg": "0 0.5 0.5 0.4 0.4\n",
    }
    for image, text in labels.items():
        _image(tmp_path / image)
        label = tmp_path / image.replace("images", "labels").replace(".jpg", ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(text)
    m = build_manifest(tmp_path)
    assert m.summary.repairs == {POLYGON: 3}
    assert m.summary.examples[POLYGON] == ["images/train/a.jpg", "images/train/b.jpg"]
    a = next(r for r in m.records() if r.file_name == "images/train/a.jpg")
    assert a.boxes.tolist()[0] == [0.1 * W, 0.1 * H, 0.5 * W, 0.6 * H]  # the polygon's bounding box
    text = summarize(m)
    assert "Repaired or dropped: nothing" not in text
    assert f"  {POLYGON}: 3 (e.g. images/train/a.jpg, images/train/b.jpg)" in text.splitlines()


def _cvat_coco(root: Path) -> None:
    """CVAT's COCO 1.0 export: every label of the project is a category, used or not."""
    names = ["car", "truck", "bus", "person", "bicycle", "motorcycle", "traffic light"]
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(names, start=1)]
    images, annotations = [], []
    for i in range(1, 5):
        _image(root / "images" / f"frame_{i:06d}.png")
        images.append({"id": i, "file_name": f"frame_{i:06d}.png", "width": W, "height": H})
        for category in (1, 4):  # car, person
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category,
                                "bbox": [2.0, 3.0, 10.0, 12.0], "area": 120.0, "iscrowd": 0,
                                "segmentation": [], "attributes": {"occluded": False}})  # fmt: skip
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"licenses": [], "info": {}, "categories": categories, "images": images,
                                "annotations": annotations}))  # fmt: skip


def test_declared_classes_without_boxes_are_counted_with_the_subset_that_keeps_the_rest(tmp_path):
    _cvat_coco(tmp_path)
    m = build_manifest(tmp_path)
    assert m.num_classes == 7
    assert m.summary.classes_without_boxes == ["truck", "bus", "bicycle", "motorcycle", "traffic light"]
    assert (
        "Classes without boxes: 5 of 7 (truck, bus, bicycle, motorcycle, traffic light): the model still "
        "predicts them, and their per-class AP is NaN; data.classes keeps a chosen subset "
        "(data.classes: [car, person])"
    ) in summarize(m).splitlines()
    kept = build_manifest(tmp_path, classes=["car", "person"])
    assert kept.num_classes == 2 and kept.summary.classes_without_boxes == []
    assert "Classes without boxes" not in summarize(kept)


def _roboflow_coco(root: Path, counts: dict[str, int]) -> None:
    for folder, n in counts.items():
        images = [{"id": i, "file_name": f"{folder}_{i:02d}_jpg.rf.{i:04x}.jpg", "width": W, "height": H}
                  for i in range(n)]  # fmt: skip
        for image in images:
            _image(root / folder / image["file_name"])
        annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10, 12], "area": 120, "iscrowd": 0}
                       for i in range(n)]  # fmt: skip
        categories = [{"id": 0, "name": "cells", "supercategory": "none"},
                      {"id": 1, "name": "cell", "supercategory": "cells"}]  # fmt: skip
        (root / folder / "_annotations.coco.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )


def test_roboflow_per_file_ids_are_renumbered_without_a_repair(tmp_path):
    _roboflow_coco(tmp_path, {"train": 6, "valid": 3, "test": 2})
    m = build_manifest(tmp_path)
    assert [r.image_id for r in m.records("train")] == [0, 1, 2, 3, 4, 5]
    assert [r.image_id for r in m.records("val")] == [6, 7, 8]  # 0..2 collided with train's: shifted
    assert [r.image_id for r in m.records("test")] == [9, 10]
    assert [r.file_name for r in m.records("val")] == [f"valid_{i:02d}_jpg.rf.{i:04x}.jpg" for i in range(3)]
    placeholder = "placeholder category, not a class (no annotations; the supercategory of the others)"
    assert m.summary.repairs == {placeholder: 3}  # the renumbering is not among them
    assert "shifted" not in summarize(m)
