"""Dataset layouts found by what they contain, and the splits they give (test split included).

Each layout is built from generated files the way its tool writes it: labelImg, VOC2007 with
ImageSets, CVAT COCO, Roboflow COCO and YOLO exports, Ultralytics YOLO, several COCO JSONs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import build_manifest, summarize
from trainables.data.build import split_val_ids
from trainables.errors import ConfigError, DataError

W, H = 40, 30  # px; every generated image


def _image(path: Path, size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return path


def _voc_xml(path: Path, filename: str, boxes=((2, 3, 20, 25),), name="dog") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for a, b, c, d in boxes
    )
    path.write_text(
        f'<?xml version="1.0"?>\n<annotation><folder>images</folder><filename>{filename}</filename>'
        f"<path>C:\\Users\\someone\\{filename}</path><size><width>{W}</width><height>{H}</height>"
        f"<depth>3</depth></size>{objects}</annotation>"
    )
    return path


def _coco_json(
    path: Path, files: list[str], *, first_id=1, categories=None, image_root: Path | None = None
) -> Path:
    """One box per image, category 1; images written under ``image_root`` (default: beside the JSON)."""
    root = image_root or path.parent
    for name in files:
        _image(root / name)
    data = {
        "images": [{"id": first_id + i, "file_name": f, "width": W, "height": H} for i, f in enumerate(files)],
        "annotations": [
            {"id": i + 1, "image_id": first_id + i, "category_id": 1, "bbox": [1.5, 2, 10, 12], "area": 120.0,
             "iscrowd": 0}
            for i in range(len(files))
        ],
        "categories": categories or [{"id": 1, "name": "cell"}],
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _splits(manifest) -> dict[str, int]:
    return {split: len(manifest.records(split)) for split in ("train", "val", "test")}


def test_labelimg_annots_beside_images(tmp_path):
    # labelImg: annots/ beside images/, with stale <filename>s copied from the annotator's machine
    for i in range(6):
        _image(tmp_path / "images" / f"pic_{i}.jpg")
        _voc_xml(tmp_path / "annots" / f"pic_{i}.xml", f"IMG_{1000 + i}.JPG")
    (tmp_path / "README.txt").write_text("downloaded from somewhere")
    _image(tmp_path / "images" / "skipped.jpg")  # labelImg writes no XML for an image never saved
    m = build_manifest(tmp_path, val_fraction=0.5, seed=0)
    assert m.summary.listed == {"image file that no .xml names, not used": ["images/skipped.jpg"]}
    assert m.summary.dropped == 1
    assert m.format == "voc" and m.source == str(tmp_path.resolve())
    assert [r.file_name for r in m.records()] == [f"pic_{i}.jpg" for i in range(6)]
    assert {Path(r.path).parent.name for r in m.records()} == {"images"}
    assert _splits(m) == {"train": 3, "val": 3, "test": 0}
    assert m.summary.boxes == 6 and m.split_settings == {"method": "fraction", "val_fraction": 0.5, "seed": 0}


def test_voc_xml_that_match_no_image_say_what_was_seen(tmp_path):
    for i in range(4):
        _image(tmp_path / "images" / f"photo_{i}.jpg")
        _voc_xml(tmp_path / "annots" / f"label_{i}.xml", f"label_{i}.png")
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    message = str(info.value)
    assert message.startswith("1 problem in dataset")
    assert "4 .xml files in annots/ but no image matched their names (or their <filename>)" in message
    assert "images/ (4 images)" in message and "set data.images_dir" in message


def _voc2007(root: Path, lists: dict[str, list[int]], n_images: int) -> None:
    for i in range(n_images):
        stem = f"{i:06d}"
        _image(root / "JPEGImages" / f"{stem}.jpg")
        _voc_xml(root / "Annotations" / f"{stem}.xml", f"{stem}.jpg", name="cat" if i % 3 else "dog")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for name, ids in lists.items():
        (main / f"{name}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
    (main / "dog_train.txt").write_text("000000  1\n")  # per-class lists are not split lists


def test_voc2007_train_val_test_lists(tmp_path):
    # 205/87/72 scaled down to 10/4/3, one image in no list, under VOCdevkit/VOC2007 as unpacked
    root = tmp_path / "VOCdevkit" / "VOC2007"
    lists = {"train": list(range(0, 10)), "val": list(range(10, 14)), "test": list(range(14, 17))}
    lists["trainval"] = lists["train"] + lists["val"]
    _voc2007(root, lists, n_images=18)
    m = build_manifest(tmp_path, val_fraction=0.3, test_fraction=0.0)
    assert _splits(m) == {"train": 10, "val": 4, "test": 3}
    assert [r.file_name for r in m.records("test")] == ["000014.jpg", "000015.jpg", "000016.jpg"]
    assert [r.image_id for r in m.records()] == list(range(1, 18))  # numbered after leaving 000017 out
    assert m.split_settings["method"] == "imagesets"
    assert [Path(p).name for p in m.split_settings["lists"]] == ["train.txt", "val.txt", "test.txt"]
    assert m.summary.images_per_split == {"train": 10, "val": 4, "test": 3}
    assert m.summary.dropped == 1 and m.summary.listed == {
        "image in no ImageSets list, left out": ["000017.jpg"]
    }
    text = summarize(m)
    assert "Images: 17 (train 10, val 4, test 3), 1 left out (listed below)" in text
    assert "  image in no ImageSets list, left out: 1\n    000017.jpg" in text
    with pytest.raises(ConfigError, match="test_fraction: the dataset has a test split already"):
        build_manifest(tmp_path, test_fraction=0.2)


def test_cvat_coco_export(tmp_path):
    # CVAT: annotations/instances_default.json + images/
    _coco_json(
        tmp_path / "annotations" / "instances_default.json",
        [f"frame_{i:06d}.png" for i in range(5)],
        image_root=tmp_path / "images",
    )
    m = build_manifest(tmp_path, val_fraction=0.2, seed=1)
    assert m.format == "coco" and m.source == str(
        (tmp_path / "annotations" / "instances_default.json").resolve()
    )
    assert {Path(r.path).parent for r in m.records()} == {(tmp_path / "images").resolve()}
    assert _splits(m) == {"train": 4, "val": 1, "test": 0}


def test_coco_json_deep_with_images_in_another_folder(tmp_path):
    # COCO's own layout: annotations/instances_val2017.json + val2017/
    _coco_json(
        tmp_path / "coco" / "annotations" / "instances_val2017.json",
        ["000000000139.jpg", "000000000285.jpg"],
        image_root=tmp_path / "coco" / "val2017",
    )
    m = build_manifest(tmp_path, val_fraction=0.5)
    assert [Path(r.path).parent.name for r in m.records()] == ["val2017", "val2017"]


def _roboflow_coco(root: Path, counts: dict[str, int]) -> None:
    categories = [
        {"id": 0, "name": "blood-cells", "supercategory": "none"},
        {"id": 1, "name": "cell", "supercategory": "blood-cells"},
        {"id": 2, "name": "platelet", "supercategory": "blood-cells"},
    ]
    for folder, n in counts.items():
        files = [f"{folder}_{i}_jpg.rf.{i:04x}.jpg" for i in range(n)]
        _coco_json(root / folder / "_annotations.coco.json", files, first_id=0, categories=categories)
    (root / "README.roboflow.txt").write_text("exported from roboflow.com")


def test_roboflow_coco_three_folders(tmp_path):
    _roboflow_coco(tmp_path, {"train": 7, "valid": 3, "test": 2})
    m = build_manifest(tmp_path)
    assert m.format == "coco" and m.source == str(tmp_path.resolve())
    # the placeholder category 0 (the dataset's name, no annotations) is not a class
    assert [(c.label, c.name, c.dataset_id) for c in m.classes] == [(1, "cell", 1), (2, "platelet", 2)]
    assert _splits(m) == {"train": 7, "val": 3, "test": 2}
    assert {Path(r.path).parent.name for r in m.records("val")} == {"valid"}
    assert m.split_settings == {
        "method": "layout",
        "parts": {"train/_annotations.coco.json": "train", "valid/_annotations.coco.json": "val",
                  "test/_annotations.coco.json": "test"},
    }  # fmt: skip
    # every JSON starts at id 0: valid's and test's ids move past the ones before them
    assert [r.image_id for r in m.records()] == list(range(12))
    s = m.summary
    assert (
        s.repairs["placeholder category, not a class (no annotations; the supercategory of the others)"] == 3
    )
    assert not any("shifted" in reason for reason in s.repairs)  # the manifest's own ids: not a repair
    assert "Split: from the dataset's parts: train/_annotations.coco.json (train), valid/" in summarize(m)


def test_roboflow_coco_without_valid_splits_train_by_fraction(tmp_path):
    _roboflow_coco(tmp_path, {"train": 8, "test": 2})
    m = build_manifest(tmp_path, val_fraction=0.25, seed=4)
    assert _splits(m) == {"train": 6, "val": 2, "test": 2}
    assert {r.image_id for r in m.records("val")} == split_val_ids(list(range(8)), val_fraction=0.25, seed=4)
    assert m.split_settings["val_fraction"] == 0.25


def test_several_coco_jsons_take_their_split_from_the_name(tmp_path):
    _coco_json(tmp_path / "instances_train2017.json", ["a.jpg", "b.jpg", "c.jpg"])
    _coco_json(tmp_path / "instances_val2017.json", ["d.jpg"], first_id=10)
    m = build_manifest(tmp_path)
    assert _splits(m) == {"train": 3, "val": 1, "test": 0}
    assert [r.image_id for r in m.records("val")] == [10]
    (tmp_path / "instances_val2017.json").rename(tmp_path / "extra.json")
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    message = str(info.value)
    assert "2 COCO JSON files and no way to tell which is train, val and test" in message
    assert "extra.json (split unknown), instances_train2017.json (train)" in message


def _yolo_images(root: Path, split_dir: str, n: int, labels: dict[int, str]) -> None:
    for i in range(n):
        _image(root / split_dir / "images" / f"{i}.jpg")
        if i in labels:
            label = root / split_dir / "labels" / f"{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(labels[i])


def test_roboflow_yolo_export(tmp_path):
    # Roboflow writes ../train/images (for a yolov5 checkout beside the dataset) and list names
    (tmp_path / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 2\nnames: ['car', 'person']\n"
    )
    box = "1 0.5 0.5 0.25 0.4\n"
    polygon = "0 0.1 0.2 0.6 0.1 0.5 0.8\n"  # a segmentation line: its bounding box
    _yolo_images(tmp_path, "train", 4, {0: box + polygon, 1: box, 2: ""})  # 3: no label file
    _yolo_images(tmp_path, "valid", 2, {0: box, 1: box})
    _yolo_images(tmp_path, "test", 1, {0: box})
    m = build_manifest(tmp_path)
    assert m.format == "yolo" and m.source == str((tmp_path / "data.yaml").resolve())
    assert [(c.label, c.name, c.dataset_id) for c in m.classes] == [(1, "car", 0), (2, "person", 1)]
    assert _splits(m) == {"train": 4, "val": 2, "test": 1}
    first = m.records()[0]
    assert first.file_name == "train/images/0.jpg"
    np.testing.assert_allclose(first.boxes, [[15, 9, 25, 21], [4, 3, 24, 24]], atol=1e-12)
    assert first.labels.tolist() == [2, 1] and first.category_ids.tolist() == [1, 0]
    assert m.summary.negatives == 2  # an empty label file and a missing one
    assert m.summary.repairs["image without a label file (kept as an image without objects)"] == 1
    assert m.summary.examples["image without a label file (kept as an image without objects)"] == [
        "train/images/3.jpg"
    ]


def test_ultralytics_yolo_dict_names_and_path_key(tmp_path):
    root = tmp_path / "ds"
    (tmp_path / "ds.yaml").write_text(
        "path: ds\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n"
    )
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            _image(root / "images" / split / f"{split}{i}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{split}{i}.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    m = build_manifest(tmp_path / "ds.yaml")
    assert m.class_names == ["cat", "dog"] and _splits(m) == {"train": 3, "val": 1, "test": 0}
    assert m.summary.boxes_per_class == {"cat": 0, "dog": 4}


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "0 0.5 0.5 0.2",
            "line 2: expected 4 numbers (cx cy w h) or a polygon of 3 or more x y pairs, got 3",
        ),
        ("5 0.5 0.5 0.2 0.2", "line 2: class index 5 is not in names (0..1)"),
        ("car 0.5 0.5 0.2 0.2", "line 2: class 'car' should be an integer index into names"),
        ("0 0.5 nan 0.2 0.2", "line 2: non-finite value"),
    ],
)
def test_bad_yolo_line_names_file_and_line(tmp_path, line, expected):
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a, b]\n")
    _yolo_images(tmp_path, ".", 1, {0: f"0 0.5 0.5 0.1 0.1\n{line}\n"})
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    assert f"{tmp_path.resolve() / 'labels' / '0.txt'}: {expected}" in str(info.value)


def test_yolo_split_path_not_found_is_named(tmp_path):
    (tmp_path / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnames: [a]\n")
    _yolo_images(tmp_path, "train", 1, {0: "0 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(DataError, match=r"'val: \.\./valid/images': not found \(looked at "):
        build_manifest(tmp_path)


def test_unrecognised_folder_says_what_it_saw_and_how_to_point(tmp_path):
    for i in range(3):
        _image(tmp_path / "pics" / f"{i}.jpg")
    (tmp_path / "notes.json").write_text('{"labels": []}')
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "0.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path.resolve()}: cannot find a dataset layout: found ")
    for part in ("notes.json (JSON without a COCO 'images' list)", "1 .txt files in labels/ (YOLO labels?",
                 "3 images in pics/", "data.format (coco, voc or yolo)", "data.images_dir"):  # fmt: skip
        assert part in message


def test_two_kinds_of_annotations_need_data_format(tmp_path):
    _coco_json(tmp_path / "coco.json", ["a.jpg"])
    _voc_xml(tmp_path / "a.xml", "a.jpg")
    with pytest.raises(DataError, match="holds more than one kind of annotations .*; set data.format"):
        build_manifest(tmp_path)
    assert build_manifest(tmp_path, format="voc", val_fraction=0).format == "voc"
    assert build_manifest(tmp_path, format="coco", val_fraction=0).format == "coco"


# --- the test split ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twenty(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twenty")
    return _coco_json(root / "annotations.json", [f"{i:02d}.jpg" for i in range(20)])


def test_test_fraction_leaves_the_val_split_as_it_was(twenty):
    before = build_manifest(twenty, val_fraction=0.25, seed=7)
    after = build_manifest(twenty, val_fraction=0.25, test_fraction=0.2, seed=7)
    val = [r.image_id for r in before.records("val")]
    assert [r.image_id for r in after.records("val")] == val
    assert val == sorted(split_val_ids(list(range(1, 21)), val_fraction=0.25, seed=7))
    test = {r.image_id for r in after.records("test")}
    assert len(test) == 4 and not test & set(val)
    assert _splits(after) == {"train": 11, "val": 5, "test": 4}
    assert "test" not in before.summary.images_per_split and after.summary.images_per_split["test"] == 4
    assert before.split_settings == {"method": "fraction", "val_fraction": 0.25, "seed": 7}
    assert after.split_settings == {
        "method": "fraction",
        "val_fraction": 0.25,
        "seed": 7,
        "test_fraction": 0.2,
    }
    assert "Split: random, val_fraction 0.25, seed 7; random test, test_fraction 0.2, seed 7" in summarize(
        after
    )
    again = build_manifest(twenty, val_fraction=0.25, test_fraction=0.2, seed=7)
    assert {r.image_id for r in again.records("test")} == test


def test_test_path_is_all_test(twenty, tmp_path):
    held_out = _coco_json(tmp_path / "held_out.json", ["x.jpg", "y.jpg"], first_id=1)
    m = build_manifest(twenty, test_source=held_out, val_fraction=0.25)
    assert _splits(m) == {"train": 15, "val": 5, "test": 2}
    assert [r.image_id for r in m.records("test")] == [21, 22]  # ids 1, 2 collided: shifted
    assert m.split_settings["test_source"] == str(held_out.resolve())
    with pytest.raises(ConfigError, match="test_fraction: the dataset has a test split already"):
        build_manifest(twenty, test_source=held_out, test_fraction=0.1)


def test_test_path_clashing_with_an_export_test_folder(tmp_path):
    _roboflow_coco(tmp_path / "export", {"train": 2, "valid": 1, "test": 1})
    other = _coco_json(tmp_path / "other.json", ["o.jpg"])
    with pytest.raises(
        ConfigError, match=r"test_path: the dataset has its own test split \(test/_annotations"
    ):
        build_manifest(tmp_path / "export", test_source=other)


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (0.2, -0.1), (0.2, 1.0)])
def test_bad_fractions_are_config_errors(twenty, val, test):
    with pytest.raises(ConfigError, match="fraction"):
        build_manifest(twenty, val_fraction=val, test_fraction=test)


def test_roboflow_voc_export_folders(tmp_path):
    # Roboflow's Pascal VOC export: train/ valid/ test/, each with its images and .xml side by side;
    # VOC has no class list, so the classes are the names used in any of the folders
    for folder, n in (("train", 3), ("valid", 2), ("test", 1)):
        for i in range(n):
            _image(tmp_path / folder / f"{i}_jpg.rf.{folder}.jpg")
            name = "cat" if (folder, i) == ("test", 0) else "dog"
            _voc_xml(tmp_path / folder / f"{i}_jpg.rf.{folder}.xml", f"{i}.jpg", name=name)
    m = build_manifest(tmp_path)
    assert m.class_names == ["cat", "dog"] and _splits(m) == {"train": 3, "val": 2, "test": 1}
    assert {Path(r.path).parent.name for r in m.records("val")} == {"valid"}
    assert m.records("test")[0].labels.tolist() == [1]


def test_split_keys_that_would_do_nothing_are_config_errors(tmp_path):
    _roboflow_coco(tmp_path / "export", {"train": 2, "valid": 1})
    other = _coco_json(tmp_path / "other.json", ["o.jpg"])
    with pytest.raises(
        ConfigError, match=r"val_path: the dataset has its own val split \(valid/_annotations"
    ):
        build_manifest(tmp_path / "export", val_source=other)
    (tmp_path / "yolo" / "data.yaml").parent.mkdir()
    (tmp_path / "yolo" / "data.yaml").write_text("train: images\nnames: [a]\n")
    _yolo_images(tmp_path / "yolo", ".", 1, {0: "0 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(ConfigError, match="images_dir: not used for YOLO datasets"):
        build_manifest(tmp_path / "yolo", images_dir=tmp_path)


# --- YOLO: every label file has its image, boxes at the edge, a broken data.yaml -----------------


def _ultralytics(root: Path, counts: dict[str, int], line="0 0.5 0.5 0.5 0.5\n") -> None:
    """data.yaml + images/<split>/raccoon-<i>.jpg + labels/<split>/raccoon-<i>.txt."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: raccoon\n")
    for split, n in counts.items():
        for i in range(1, n + 1):
            _image(root / "images" / split / f"raccoon-{i}.jpg")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"raccoon-{i}.txt").write_text(line)


def test_yolo_label_file_without_its_image_is_an_error(tmp_path):
    _ultralytics(tmp_path, {"train": 3, "val": 1})
    (tmp_path / "labels" / "train" / "classes.txt").write_text("raccoon\n")  # labelImg writes it: not a label
    (tmp_path / "images" / "train" / "raccoon-2.jpg").unlink()
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    root = tmp_path.resolve()
    assert str(info.value) == (
        f"1 problem in dataset {root / 'data.yaml'}:\n"
        f"  - {root / 'labels' / 'train' / 'raccoon-2.txt'}: file: label file without its image "
        f"(no image file {root / 'images' / 'train' / 'raccoon-2'}.*)"
    )
    (tmp_path / "labels" / "train" / "raccoon-2.txt").unlink()
    assert _splits(build_manifest(tmp_path)) == {"train": 2, "val": 1, "test": 0}
    # an image of a kind boxtune does not read is still its label's image, and a symlinked folder of
    # images is followed: neither label is an orphan
    (tmp_path / "images" / "train" / "raccoon-9.heic").write_bytes(b"not read")
    (tmp_path / "labels" / "train" / "raccoon-9.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    _image(tmp_path / "elsewhere" / "raccoon-8.jpg")
    (tmp_path / "images" / "train" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "labels" / "train" / "more").mkdir()
    (tmp_path / "labels" / "train" / "more" / "raccoon-8.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert _splits(build_manifest(tmp_path)) == {"train": 2, "val": 1, "test": 0}


def test_yolo_subset_lists_and_labels_beside_images_have_no_orphan_check(tmp_path):
    # a .txt list is a chosen subset of images/train: the other label files are not orphans
    _ultralytics(tmp_path / "lists", {"train": 3, "val": 1})
    (tmp_path / "lists" / "train.txt").write_text("images/train/raccoon-1.jpg\nimages/train/raccoon-3.jpg\n")
    (tmp_path / "lists" / "data.yaml").write_text("train: train.txt\nval: images/val\nnames: [raccoon]\n")
    assert _splits(build_manifest(tmp_path / "lists")) == {"train": 2, "val": 1, "test": 0}
    # labels beside the images (no images/ folder): other .txt files there are not label files
    (tmp_path / "flat" / "data.yaml").parent.mkdir()
    (tmp_path / "flat" / "data.yaml").write_text("train: pics\nnames: [raccoon]\n")
    _image(tmp_path / "flat" / "pics" / "a.jpg")
    (tmp_path / "flat" / "pics" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "flat" / "pics" / "notes.txt").write_text("shot in 2019\n")
    assert len(build_manifest(tmp_path / "flat").records()) == 1


def test_yolo_image_listed_twice_is_an_error(tmp_path):
    _ultralytics(tmp_path, {"train": 2, "val": 1})
    (tmp_path / "train.txt").write_text("images/train/raccoon-1.jpg\nimages/train/raccoon-2.jpg\n")
    (tmp_path / "val.txt").write_text("images/val/raccoon-1.jpg\n./images/train/raccoon-1.jpg\n")
    (tmp_path / "data.yaml").write_text("train: train.txt\nval: val.txt\nnames: [raccoon]\n")
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    image = tmp_path.resolve() / "images" / "train" / "raccoon-1.jpg"
    train, val = tmp_path.resolve() / "train.txt", tmp_path.resolve() / "val.txt"
    assert f"  - {image}: image: in two parts of the dataset ({train} and {val})" in str(info.value)
    (tmp_path / "val.txt").write_text("images/val/raccoon-1.jpg\n")
    (tmp_path / "train.txt").write_text(
        "images/train/raccoon-1.jpg\nimages/train/raccoon-2.jpg\nimages/train/raccoon-1.jpg\n"
    )
    with pytest.raises(DataError) as info:
        build_manifest(tmp_path)
    assert str(info.value).endswith(f"  - {train}: line 3: {image} is listed twice (also line 1)")


@pytest.mark.parametrize(
    "line, box, clipped",
    [
        # raccoon-118 as a 6-decimal YOLO line: (0.552189 + 0.895623 / 2) * 297 = 297.00015 px
        ("0 0.552189 0.5 0.895623 0.5", [297 * (0.552189 - 0.895623 / 2), 50, 297, 150], 0),
        ("0 0.447811 0.5 0.895623 0.5", [0, 50, 297 * (0.447811 + 0.895623 / 2), 150], 0),
        ("0 0.9 0.5 0.4 0.2", [297 * 0.7, 80, 297, 120], 1),  # past by 29.7 px: a repair
        ("0 0.5 0.999 0.5 0.01", [74.25, 198.8, 222.75, 200], 1),  # past by 0.8 px: a repair
    ],
)
def test_yolo_box_at_the_edge_is_a_repair_only_past_the_rounding(tmp_path, line, box, clipped):
    (tmp_path / "data.yaml").write_text("train: images\nnames: [raccoon]\n")
    _image(tmp_path / "images" / "0.jpg", size=(297, 200))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "0.txt").write_text(line + "\n")
    m = build_manifest(tmp_path, val_fraction=0)
    np.testing.assert_allclose(m.records()[0].boxes, [box], atol=1e-9)
    assert m.summary.repairs.get("box clipped to the image edge", 0) == clipped


def test_malformed_data_yaml_in_a_folder_says_where_it_breaks(tmp_path):
    _ultralytics(tmp_path, {"train": 1})
    (tmp_path / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\n\nnames:\n  0: raccoon\n- dog\n"
    )
    data_yaml = tmp_path.resolve() / "data.yaml"
    for source in (tmp_path, data_yaml):  # the folder says what naming the file says
        with pytest.raises(DataError) as info:
            build_manifest(source)
        assert str(info.value) == (
            f"1 problem in YOLO dataset {data_yaml}:\n"
            f"  - {data_yaml}: file: malformed YAML at line 7, column 1: expected <block end>, but found '-'"
        )
    # beside another layout a broken YAML is not taken for YOLO: the COCO dataset is read
    _coco_json(tmp_path / "annotations.json", ["a.jpg"])
    assert build_manifest(tmp_path).format == "coco"
