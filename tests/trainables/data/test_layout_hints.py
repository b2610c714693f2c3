"""Hints that point the right way when no layout fits: the data.yaml a folder or two up, the folder
the images are in, and the setting's name the user can change (a config key, or a flag of
``boxtune data summary``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from trainables.data import SUMMARY_FLAGS, build_manifest
from trainables.errors import DataError


def _yolo_export(root: Path) -> None:
    """Roboflow's YOLO export: data.yaml beside train/ and valid/, each with images/ and labels/."""
    for split, n in (("train", 3), ("valid", 1)):
        for i in range(n):
            image = root / split / "images" / f"{split}_{i}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30)).save(image)
            label = root / split / "labels" / f"{split}_{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['leaf']\n")


@pytest.mark.parametrize(("named", "up", "images_in"), [
    ("train", "one folder", "3 images in images/,"),
    ("train/images", "2 folders", "3 images in images/ itself,"),
])  # fmt: skip
def test_a_data_yaml_above_the_folder_named_is_named(tmp_path, named, up, images_in):
    _yolo_export(tmp_path / "leaves.v2i.yolov8")
    folder = tmp_path / "leaves.v2i.yolov8" / named
    with pytest.raises(DataError) as info:
        build_manifest(folder)
    message = str(info.value)
    assert message.startswith(f"{folder.resolve()}: cannot find a dataset layout: found {images_in}")
    assert "no data.yaml with names found" not in message
    assert message.endswith(
        f"The YOLO dataset file is {tmp_path.resolve() / 'leaves.v2i.yolov8' / 'data.yaml'} ({up} up): "
        "set data.path to it, or to its folder"
    )
    assert build_manifest(tmp_path / "leaves.v2i.yolov8" / "data.yaml").summary.images == 4  # the hint works


def test_images_alone_name_their_folder_and_where_the_annotations_go(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30)).save(photos / f"p{i}.jpg")
    with pytest.raises(DataError) as info:
        build_manifest(photos)
    assert str(info.value) == (
        f"{photos.resolve()}: cannot find a dataset layout: found 4 images in photos/ itself, their annotations "
        "expected beside them (a COCO .json, VOC .xml files, or a YOLO data.yaml with labels/). Point boxtune "
        "at it with data.format (coco, voc or yolo), data.images_dir (the image folder), or data.path set to "
        "the annotation file itself (a COCO .json or a YOLO data.yaml)"
    )
    with pytest.raises(DataError) as info:
        build_manifest(photos, names=SUMMARY_FLAGS)
    assert str(info.value).endswith(
        "Point boxtune at it with --format (coco, voc or yolo), --images-dir (the image folder), or the "
        "dataset path set to the annotation file itself (a COCO .json or a YOLO data.yaml)"
    )
