"""The manifest: Parquet round trip, byte-identical rebuilds, splits, and the torch dataset on top."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainables.data import (
    DetectionDataset,
    build_manifest,
    collate_detection,
    make_demo_dataset,
    read_manifest,
    summarize,
)
from trainables.data.build import split_val_ids
from trainables.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_images=12, image_size=64, seed=1)


def _fields(record) -> dict:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _assert_same_records(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        fa, fb = _fields(a), _fields(b)
        for key in fa:
            if isinstance(fa[key], np.ndarray):
                assert fa[key].dtype == fb[key].dtype and np.array_equal(fa[key], fb[key]), key
            else:
                assert fa[key] == fb[key], key


def test_round_trip_keeps_everything(demo, tmp_path):
    built = build_manifest(demo, seed=5)
    path = built.write(tmp_path / "sub" / "manifest.parquet")
    loaded = read_manifest(path)
    _assert_same_records(built.records(), loaded.records())
    assert loaded.classes == built.classes
    assert [(c.label, c.name, c.dataset_id) for c in loaded.classes] == [
        (1, "circle", 5),
        (2, "square", 17),
        (3, "triangle", 42),
    ]
    assert loaded.summary == built.summary
    assert loaded.split_settings == {"method": "fraction", "val_fraction": 0.2, "seed": 5}
    assert loaded.source == str(demo.resolve()) and loaded.format == "coco"
    assert len(loaded.records("train")) + len(loaded.records("val")) == 12
    assert loaded.records()[0].boxes.shape[1] == 4


def test_parquet_schema_and_metadata(demo, tmp_path):
    path = build_manifest(demo).write(tmp_path / "m.parquet")
    schema = pq.read_schema(path)
    expected = {
        "image_id": pa.int64(), "file_name": pa.string(), "path": pa.string(), "width": pa.int32(),
        "height": pa.int32(), "boxes": pa.list_(pa.float64()), "labels": pa.list_(pa.int64()),
        "category_ids": pa.list_(pa.int64()), "iscrowd": pa.list_(pa.bool_()),
        "area": pa.list_(pa.float64()), "eval_xywh": pa.list_(pa.float64()),
        "eval_category_ids": pa.list_(pa.int64()), "eval_iscrowd": pa.list_(pa.bool_()),
        "eval_area": pa.list_(pa.float64()), "eval_difficult": pa.list_(pa.bool_()), "split": pa.string(),
        "jpeg_tail_missing": pa.bool_(),
    }  # fmt: skip
    assert {f.name: f.type for f in schema} == expected
    meta = json.loads(schema.metadata[b"boxtune"])
    assert meta["classes"][2] == {"label": 3, "name": "triangle", "dataset_id": 42}
    assert meta["summary"]["images"] == 12 and meta["format"] == "coco"
    table = pq.read_table(path)
    first = table.slice(0, 1).to_pylist()[0]
    assert len(first["boxes"]) == 4 * len(first["labels"])
    assert len(first["eval_xywh"]) == 4 * len(first["eval_area"])


def test_rebuild_is_byte_identical(demo, tmp_path):
    a = build_manifest(demo, seed=3).write(tmp_path / "a.parquet")
    b = build_manifest(demo, seed=3).write(tmp_path / "b.parquet")
    assert a.read_bytes() == b.read_bytes()


def test_reading_needs_neither_annotations_nor_images(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo.parent, copy)
    path = build_manifest(copy / "annotations.json").write(tmp_path / "m.parquet")
    shutil.rmtree(copy)
    loaded = read_manifest(path)
    assert len(loaded.records()) == 12 and loaded.summary.images == 12


def test_split_is_deterministic_and_follows_the_seed(demo):
    def val_ids(seed):
        return [r.image_id for r in build_manifest(demo, seed=seed).records("val")]

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)
    ids = list(range(1, 13))
    expected = sorted(ids[i] for i in np.random.default_rng(0).permutation(12)[:2])
    assert val_ids(0) == expected


@pytest.mark.parametrize(
    "fraction, n_images, n_val",
    [(0.0, 12, 0), (0.2, 12, 2), (0.5, 12, 6), (0.01, 12, 1), (0.99, 12, 11), (0.5, 1, 0), (0.5, 2, 1)],
)
def test_val_fraction_sizes(fraction, n_images, n_val):
    assert len(split_val_ids(list(range(n_images)), val_fraction=fraction, seed=0)) == n_val


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2])
def test_bad_val_fraction_is_a_config_error(demo, fraction):
    with pytest.raises(ConfigError, match="val_fraction should be in"):
        build_manifest(demo, val_fraction=fraction)


def test_val_source_coco_shifts_colliding_ids(tmp_path):
    train = make_demo_dataset(tmp_path / "train", num_images=4, image_size=64, seed=1)
    val = make_demo_dataset(tmp_path / "val", num_images=3, image_size=64, seed=2)
    m = build_manifest(train, val_source=val)
    assert [r.image_id for r in m.records("train")] == [1, 2, 3, 4]
    assert [r.image_id for r in m.records("val")] == [5, 6, 7]
    assert all(r.path.startswith(str((tmp_path / "val").resolve())) for r in m.records("val"))
    assert m.summary.images_per_split == {"train": 4, "val": 3}
    assert m.summary.repairs == {}  # renumbering the manifest's own ids changes nothing a user reads
    assert m.split_settings == {"method": "val_source", "val_source": str(val.resolve())}


def _voc_one(root: Path, stem: str, name: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (90, 90, 90)).save(root / f"{stem}.jpg")
    (root / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>32</width><height>24</height></size>"
        f"<object><name>{name}</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax><ymax>10</ymax></bndbox></object></annotation>"
    )


def test_val_source_voc_maps_classes_by_name(tmp_path):
    for stem, name in [("a", "dog"), ("b", "cat")]:
        _voc_one(tmp_path / "train", stem, name)
    _voc_one(tmp_path / "val", "z", "dog")
    m = build_manifest(tmp_path / "train", val_source=tmp_path / "val")
    (val,) = m.records("val")
    assert val.image_id == 3 and val.labels.tolist() == [2] and val.category_ids.tolist() == [2]
    _voc_one(tmp_path / "val", "y", "horse")
    with pytest.raises(DataError, match="class 'horse': not a class of the training set"):
        build_manifest(tmp_path / "train", val_source=tmp_path / "val")


def test_write_is_atomic(demo, tmp_path, monkeypatch):
    manifest = build_manifest(demo)
    path = manifest.write(tmp_path / "m.parquet")
    before = path.read_bytes()

    def broken_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        build_manifest(demo, seed=9).write(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]


def test_reading_a_non_manifest_is_a_data_error(tmp_path):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="not a boxtune manifest"):
        read_manifest(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(DataError, match="not a readable Parquet manifest"):
        read_manifest(tmp_path / "junk.parquet")


def _crowd_coco(tmp_path: Path) -> Path:
    Image.new("RGB", (48, 32), (0, 0, 0)).save(tmp_path / "a.jpg")
    data = {
        "images": [{"id": 4, "file_name": "a.jpg", "width": 48, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 4, "category_id": 3, "bbox": [2, 4, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 4, "category_id": 3, "bbox": [20, 0, 10, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cat"}],
    }
    (tmp_path / "d.json").write_text(json.dumps(data))
    return tmp_path / "d.json"


def test_detection_dataset_targets_skip_crowd_regions(tmp_path):
    manifest = build_manifest(_crowd_coco(tmp_path), val_fraction=0)
    image, target = DetectionDataset(manifest.records())[0]
    assert (
        isinstance(image, tv_tensors.Image)
        and image.dtype == torch.uint8
        and tuple(image.shape) == (3, 32, 48)
    )
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY and tuple(
        target["boxes"].canvas_size
    ) == (32, 48)
    assert target["boxes"].dtype == torch.float32 and target["boxes"].tolist() == [[2, 4, 12, 12]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1]
    assert target["image_id"] == 4
    assert manifest.records()[0].iscrowd.tolist() == [False, True]


def test_detection_dataset_applies_v2_transforms_and_collates(tmp_path):
    records = build_manifest(_crowd_coco(tmp_path), val_fraction=0).records()
    dataset = DetectionDataset(records, transforms=v2.RandomHorizontalFlip(p=1.0))
    image, target = dataset[0]
    assert target["boxes"].tolist() == [[36, 4, 46, 12]]  # x -> 48 - x
    images, targets = collate_detection([dataset[0], dataset[0]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2


def test_summary_and_summarize(demo):
    manifest = build_manifest(demo)
    s = manifest.summary
    assert json.loads(json.dumps(dataclasses.asdict(s))) == dataclasses.asdict(s)
    assert s.images == 12 and s.images_per_split == {"train": 10, "val": 2}
    annotations = json.loads(demo.read_text())["annotations"]
    assert s.boxes == len(annotations)
    assert {k: sum(v.values()) for k, v in s.box_sizes.items()} == s.boxes_per_class
    text = summarize(manifest)
    assert f"Source: {demo.resolve()} (coco)" in text and "Images: 12 (train 10, val 2, test 0)" in text
    circles = sum(a["category_id"] == 5 for a in annotations)
    assert any(line.split()[:4] == ["1", "5", "circle", str(circles)] for line in text.splitlines())
    assert "Repaired or dropped: nothing" in text


def test_records_rejects_unknown_split(demo):
    with pytest.raises(ValueError, match="split should be"):
        build_manifest(demo).records("testing")
