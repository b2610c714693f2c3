"""Image files missing from a partly uploaded dataset: one problem, the count first, a few examples.

Built as a user meets it: a Roboflow COCO export (``train/_annotations.coco.json`` beside its
images) whose upload stopped after 197 of its 400 images, and a labelImg VOC folder with some
images not copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from trainables.data import build_manifest
from trainables.errors import DataError

W, H = 40, 30  # px


def _roboflow_name(i: int) -> str:
    return f"img_{i:03d}_jpg.rf.{i:08x}.jpg"


def _partial_roboflow_coco(root: Path, listed: int, present: int) -> Path:
    train = root / "train"
    train.mkdir(parents=True)
    images, annotations = [], []
    for i in range(listed):
        images.append({"id": i, "file_name": _roboflow_name(i), "width": W, "height": H})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10, 12], "area": 120,
                            "iscrowd": 0})  # fmt: skip
        if i < present:
            Image.new("RGB", (W, H), (90, 120, 150)).save(train / _roboflow_name(i))
    categories = [{"id": 0, "name": "cells", "supercategory": "none"},
                  {"id": 1, "name": "cell", "supercategory": "cells"}]  # fmt: skip
    path = train / "_annotations.coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_a_partial_coco_upload_is_counted_first_then_a_few_examples(tmp_path):
    json_file = _partial_roboflow_coco(tmp_path, listed=400, present=197)
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == f"1 problem in dataset {tmp_path.resolve()}:"
    assert len(lines) == 2
    first = ", ".join(f"image id {i} ({_roboflow_name(i)})" for i in range(197, 202))
    train = json_file.parent
    looked = ", ".join(str(d) for d in (train, train / "images", tmp_path / "images"))
    assert lines[1] == (
        f"  - {json_file}: images: 203 of the 400 images the JSON lists are missing; first 5: {first} "
        f"(looked in {looked}; the other 197 are there)"
    )
    assert lines[1].count(f"{train}, ") == 1  # the JSON's folder is also an image folder found: said once


def test_one_missing_coco_image_is_named_with_each_folder_once(tmp_path):
    json_file = _partial_roboflow_coco(tmp_path, listed=3, present=2)
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    train = json_file.parent
    looked = ", ".join(str(d) for d in (train, train / "images", tmp_path / "images"))
    assert str(info.value).splitlines()[1] == (
        f"  - {json_file}: image id 2 ({_roboflow_name(2)}): image file not found (looked in {looked})"
    )


def _voc(xml: Path, image: str) -> None:
    xml.parent.mkdir(parents=True, exist_ok=True)
    xml.write_text(
        f"<annotation><filename>{image}</filename><size><width>{W}</width><height>{H}</height></size>"
        "<object><name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>25</ymax></bndbox>"
        "</object></annotation>"
    )


def test_a_partial_voc_copy_is_counted_first_then_a_few_examples(tmp_path):
    for i in range(10):
        _voc(tmp_path / "annots" / f"pic_{i}.xml", f"pic_{i}.jpg")
        if i % 2 == 0:  # pic_1, 3, 5, 7, 9 were never copied
            (tmp_path / "images").mkdir(exist_ok=True)
            Image.new("RGB", (W, H)).save(tmp_path / "images" / f"pic_{i}.jpg")
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"1 problem in dataset {tmp_path.resolve()}:"
    first = ", ".join(f"pic_{i}.xml (image 'pic_{i}.jpg')" for i in (1, 3, 5, 7, 9))
    assert lines[1].startswith(
        f"  - {tmp_path.resolve()}: images: 5 of the 10 .xml files in annots/ name an image that is not "
        f"found: {first} (searched images/ (5 images), "
    )
    assert lines[1].endswith("; the other 5 images are there)")
