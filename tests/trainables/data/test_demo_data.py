"""The generated demo dataset: deterministic bytes, valid COCO, shapes where the boxes say."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from trainables.data import DEMO_CATEGORIES, build_manifest, make_demo_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, float]:
    start = time.perf_counter()
    path = make_demo_dataset(tmp_path_factory.mktemp("full"))
    return path, time.perf_counter() - start


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _files(make_demo_dataset(tmp_path / "a", num_images=6, image_size=64, seed=4).parent)
    b = _files(make_demo_dataset(tmp_path / "b", num_images=6, image_size=64, seed=4).parent)
    c = _files(make_demo_dataset(tmp_path / "c", num_images=6, image_size=64, seed=5).parent)
    assert len(a) == 7 and a == b
    assert a["annotations.json"] != c["annotations.json"]


def test_default_dataset_is_fast_and_valid_coco(full):
    path, seconds = full
    assert seconds < 10
    assert path.name == "annotations.json" and len(list((path.parent / "images").glob("*.jpg"))) == 240
    coco = COCO(str(path))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == DEMO_CATEGORIES
    data = json.loads(path.read_text())
    assert data["info"]["seed"] == 0 and data["info"]["image_size"] == 160
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert set(per_image) <= {0, 1, 2, 3, 4} and set(per_image) >= {1, 4}
    assert 0.02 <= per_image.count(0) / 240 <= 0.09  # ~5% negatives
    sides = np.array([a["bbox"][2:] for a in data["annotations"]])
    assert sides.min() >= 24 and sides.max() <= 72
    assert {a["category_id"] for a in data["annotations"]} == {5, 17, 42}


def _overlap(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / min(a[2] * a[3], b[2] * b[3])


def test_shapes_sit_in_their_boxes_with_their_colour(full):
    path, _ = full
    coco = COCO(str(path))
    dominant = {5: 0, 17: 1, 42: 2}  # circle red, square green, triangle blue
    for image_id in coco.getImgIds()[:40]:
        info = coco.loadImgs([image_id])[0]
        pixels = np.asarray(Image.open(path.parent / info["file_name"]).convert("RGB")).astype(int)
        assert pixels.shape == (info["height"], info["width"], 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 160
            # a point inside every shape (the triangle is widest near its base)
            px = pixels[int(y + 0.75 * h), int(x + w / 2)]
            assert int(np.argmax(px)) == dominant[ann["category_id"]] and px.max() - np.sort(px)[1] > 60
        for i, a in enumerate(anns):
            for b in anns[i + 1 :]:
                assert _overlap(a["bbox"], b["bbox"]) <= 0.1


def test_object_sizes_scale_with_image_size(tmp_path):
    path = make_demo_dataset(tmp_path, num_images=30, image_size=80, seed=2)
    data = json.loads(path.read_text())
    sides = np.array([a["bbox"][2] for a in data["annotations"]])
    assert sides.min() >= 12 and sides.max() <= 36
    assert {(i["width"], i["height"]) for i in data["images"]} == {(80, 80)}
    manifest = build_manifest(path, val_fraction=0.25)
    assert manifest.label_to_dataset_id == {1: 5, 2: 17, 3: 42}
    assert manifest.summary.repairs == {} and manifest.summary.images_per_split == {"train": 22, "val": 8}
