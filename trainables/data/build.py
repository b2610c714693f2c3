"""From a dataset on disk to checked, repaired image records: format detection, classes, split.

Build order: parse the annotation files of the training source (and the validation source), pick
and rename classes, decode every image once, repair boxes, split. Every problem found on the way
is collected and raised together as one ``DataError`` once it is clear nothing more can be
learned, so a user fixes a dataset in one round instead of one error per run.

Split, in order of precedence:

1. ``val_source`` given: the training source is all train, the second dataset all val (VOC
   ImageSets lists are then ignored);
2. VOC ``ImageSets/Main`` lists (see ``voc.py``): images listed in neither list are left out
   and counted;
3. otherwise a random ``val_fraction`` of the images, with ``numpy.random.default_rng(seed)``
   permuting them in image-id order.

Image ids: COCO ids are kept; VOC images are numbered 1..N in sorted XML-name order. Validation
images from ``val_source`` are numbered after the training ones (VOC), or keep their COCO ids
unless one collides with a training id, in which case all of them are shifted past the largest
training id (counted).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.data.coco import parse_coco
from trainables.data.images import ImageProbe, annotated_frame, probe_image, transpose_boxes
from trainables.data.records import ClassInfo, ImageRecord, Problems, RawDataset, RawImage, Repairs
from trainables.data.voc import find_voc_annotations, parse_voc
from trainables.errors import ConfigError, DataError

__all__ = ["FORMATS", "BuildResult", "build_records", "detect_format", "select_classes", "split_val_ids"]

FORMATS = ("auto", "coco", "voc")

CLIPPED = "box clipped to the image edge"
DEGENERATE = "box with zero or negative width or height dropped"
UNSELECTED = "box of a class not in `classes` dropped"
EXIF_ROTATED = "boxes moved to the EXIF-rotated frame (annotated on raw pixels)"
SIZE_MISMATCH = "recorded image size matches neither frame (real size used)"
NOT_LISTED = "image in neither ImageSets list, left out"
ID_SHIFTED = "val image id shifted (collided with a train image id)"


def _to_rgb_reason(mode: str) -> str:
    return f"image converted to RGB from mode {mode}"


@dataclass
class BuildResult:
    records: list[ImageRecord]
    classes: list[ClassInfo]
    repairs: Repairs
    format: str
    source: str
    split: dict


def detect_format(source: str | os.PathLike, format: str = "auto") -> tuple[str, Path]:
    """(format, annotations path): the COCO JSON file, or the VOC dataset folder."""
    if format not in FORMATS:
        raise ConfigError(f"format should be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_file():
        if path.suffix.lower() == ".json" and format in ("auto", "coco"):
            return "coco", path
        raise DataError(
            f"{path}: not a dataset for format={format!r}: expected a COCO .json file or a VOC folder"
        )
    jsons = sorted(path.glob("*.json")) or sorted(path.glob("annotations/*.json"))
    if format == "voc" or (format == "auto" and find_voc_annotations(path) is not None):
        return "voc", path
    if len(jsons) == 1:
        return "coco", jsons[0]
    found = ", ".join(j.name for j in jsons) if jsons else "no .json file and no VOC .xml files"
    raise DataError(f"{path}: cannot tell the dataset format (found {found}); pass the annotations file")


def _parse(fmt: str, path: Path, images_dir: Path | None, problems: Problems) -> RawDataset | None:
    if fmt == "coco":
        return parse_coco(path, images_dir=images_dir, problems=problems)
    return parse_voc(path, images_dir=images_dir, problems=problems)


def select_classes(
    categories: list[tuple[int, str]],
    *,
    classes: list[str] | None,
    rename: dict[str, str] | None,
    where: str,
    problems: Problems,
) -> list[tuple[str, ClassInfo]]:
    """(dataset name, ClassInfo) per kept class, labels 1..K in the dataset's order.

    ``classes`` and the keys of ``rename`` are class names as the dataset spells them; renaming
    keeps a class's label and dataset id. Unknown names and clashing renames go to ``problems``.
    """
    if isinstance(classes, str):
        raise ConfigError(f"classes should be a list of class names, got the string {classes!r}")
    if classes is not None and len(classes) == 0:
        raise ConfigError("classes should name at least one class, got []")
    for new in (rename or {}).values():
        if not isinstance(new, str) or not new.strip():
            raise ConfigError(f"rename should map class names to non-empty names, got {new!r}")
    known = [name for _, name in categories]
    listing = ", ".join(repr(n) for n in known) or "none"
    for key, names in (("classes", classes or []), ("rename", list(rename or {}))):
        for name in names:
            if name not in known:
                problems.add(where, key, f"unknown class {name!r}; the dataset's classes are {listing}")
    rename = rename or {}
    keep = [(cid, name) for cid, name in categories if classes is None or name in classes]
    new_names = [rename.get(name, name) for _, name in keep]
    for name in sorted({n for n in new_names if new_names.count(n) > 1}):
        problems.add(where, "rename", f"two classes would be named {name!r}; names must stay unique")
    return [
        (name, ClassInfo(label=i, name=new, dataset_id=cid))
        for i, ((cid, name), new) in enumerate(zip(keep, new_names, strict=True), start=1)
    ]


def _to_record(
    raw: RawImage, probe: ImageProbe, kept: dict[str, ClassInfo], repairs: Repairs, image_id: int, split: str
) -> ImageRecord:
    name = raw.file_name
    width, height = probe.size
    rotate, mismatch = annotated_frame(probe, raw.recorded_size)
    if mismatch:
        repairs.add(SIZE_MISMATCH, name)
    if probe.mode != "RGB":
        repairs.add(_to_rgb_reason(probe.mode), name)
    chosen = [b for b in raw.boxes if b.name in kept]
    repairs.add(UNSELECTED, name, len(raw.boxes) - len(chosen))
    boxes = np.array([b.xyxy for b in chosen], dtype=np.float64).reshape(-1, 4)
    if rotate and len(chosen):
        boxes = transpose_boxes(boxes, probe.orientation, probe.raw_size)
        repairs.add(EXIF_ROTATED, name, len(chosen))
    clipped = np.clip(boxes, 0.0, [width, height, width, height])
    valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    repairs.add(CLIPPED, name, int(np.count_nonzero(valid & (clipped != boxes).any(axis=1))))
    repairs.add(DEGENERATE, name, int(np.count_nonzero(~valid)))
    chosen = [b for b, ok in zip(chosen, valid, strict=True) if ok]
    boxes = clipped[valid]
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area = [b.area if b.area is not None else a for b, a in zip(chosen, box_area.tolist(), strict=True)]
    return ImageRecord(
        image_id=image_id,
        file_name=name,
        path=str(raw.path),
        width=int(width),
        height=int(height),
        boxes=boxes.astype(np.float32),
        labels=np.array([kept[b.name].label for b in chosen], dtype=np.int64),
        category_ids=np.array([kept[b.name].dataset_id for b in chosen], dtype=np.int64),
        iscrowd=np.array([b.iscrowd for b in chosen], dtype=bool),
        area=np.array(area, dtype=np.float32),
        split=split,
    )


def split_val_ids(image_ids: list[int], *, val_fraction: float, seed: int) -> set[int]:
    """The ids of the validation images: deterministic in (ids, val_fraction, seed)."""
    ids = sorted(image_ids)
    n = len(ids)
    if val_fraction <= 0 or n < 2:
        return set()
    n_val = min(n - 1, max(1, math.floor(val_fraction * n + 0.5)))  # keep >= 1 train image
    order = np.random.default_rng(seed).permutation(n)
    return {ids[i] for i in order[:n_val].tolist()}


def _number(train: RawDataset, val: RawDataset | None, repairs: Repairs) -> list[tuple[RawImage, str]]:
    """(image, split) in manifest order, image ids assigned. The split is "train" for every image
    unless ``val_source`` or ImageSets lists decide it; a random split comes later."""
    images = list(train.images)
    splits = ["train"] * len(images)
    if train.format == "voc":
        if train.split_lists is not None and val is None:
            val_keys = set(train.split_lists["val"])
            listed = set(train.split_lists["train"]) | val_keys
            for image in images:
                if image.key not in listed:
                    repairs.add(NOT_LISTED, image.file_name)
            images = [image for image in images if image.key in listed]
            splits = ["val" if image.key in val_keys else "train" for image in images]
        for number, image in enumerate(images, start=1):
            image.image_id = number
    pairs = list(zip(images, splits, strict=True))
    if val is not None:
        taken = {image.image_id for image in images}
        offset = max(taken, default=0)  # type: ignore[type-var]
        if val.format == "voc":
            for number, image in enumerate(val.images, start=1):
                image.image_id = offset + number
        elif taken & {image.image_id for image in val.images}:
            for image in val.images:
                image.image_id += offset  # type: ignore[operator]
                repairs.add(ID_SHIFTED, image.file_name)
        pairs += [(image, "val") for image in val.images]
    return pairs


def _probe_all(images: list[RawImage]) -> list[ImageProbe | str | None]:
    # Decoding releases the GIL, so threads overlap it; results come back in input order.
    paths = [image.path for image in images]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: probe_image(p) if p is not None else None, paths))


def build_records(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    images_dir: str | os.PathLike | None = None,
    val_source: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: list[str] | None = None,
    rename: dict[str, str] | None = None,
) -> BuildResult:
    """Parse, check, repair and split a dataset; see the module docstring."""
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ConfigError(f"val_fraction should be in [0, 1), got {val_fraction!r}")
    fmt, path = detect_format(source, format)
    img_dir = Path(images_dir).expanduser() if images_dir is not None else None
    problems = Problems()
    train = _parse(fmt, path, img_dir, problems)
    val = None
    if val_source is not None:
        val_fmt, val_path = detect_format(val_source, fmt)
        val = _parse(val_fmt, val_path, img_dir, problems)
    if train is None or (val_source is not None and val is None):
        problems.raise_if_any(f"dataset {path}")
    assert train is not None
    for raw in (train, val):
        if raw is not None and not raw.images:
            problems.add(raw.source, "dataset", "no images (no image entries or annotation files)")

    chosen = select_classes(
        train.categories, classes=classes, rename=rename, where=str(train.source), problems=problems
    )
    kept = dict(chosen)
    if val is not None:
        train_names = {name for _, name in train.categories}
        listing = ", ".join(sorted(train_names))
        for name in sorted({box.name for image in val.images for box in image.boxes} - train_names):
            problems.add(val.source, f"class {name!r}", f"not a class of the training set ({listing})")

    repairs = Repairs()
    pairs = _number(train, val, repairs)
    probes = _probe_all([image for image, _ in pairs])
    records = []
    for (image, split), probe in zip(pairs, probes, strict=True):
        if isinstance(probe, str):
            problems.add(image.path or image.origin, f"image id {image.image_id} ({image.file_name})", probe)
        elif probe is not None and not len(problems):
            records.append(_to_record(image, probe, kept, repairs, image.image_id, split))  # type: ignore[arg-type]
    problems.raise_if_any(f"dataset {train.source}")

    if not any(r.train_mask.any() for r in records):
        had = sum(len(image.boxes) for image, _ in pairs)
        why = " left after dropping unselected classes, crowd regions and empty boxes" if had else ""
        images = f"{len(records)} image" + ("" if len(records) == 1 else "s")
        problems.add(train.source, "dataset", f"{images} but no boxes{why}")
        problems.raise_if_any(f"dataset {train.source}")

    if val is not None:
        split = {"method": "val_source", "val_source": str(val.source)}
    elif train.split_lists is not None:
        split = {"method": "imagesets", "lists": train.split_files}
    else:
        val_ids = split_val_ids([r.image_id for r in records], val_fraction=val_fraction, seed=seed)
        records = [replace(r, split="val" if r.image_id in val_ids else "train") for r in records]
        split = {"method": "fraction", "val_fraction": float(val_fraction), "seed": int(seed)}
    records.sort(key=lambda r: r.image_id)
    return BuildResult(records, [info for _, info in chosen], repairs, fmt, str(train.source), split)
