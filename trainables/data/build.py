"""From a dataset on disk to checked, repaired image records: layout, classes, decoding, split.

Build order: find the layout (``layouts.py``), parse the annotation files of every part of it
(and of ``val_source`` and ``test_source``), pick and rename classes, decode every image once,
repair boxes, split. Every problem found on the way is collected and raised together as one
``DataError`` once it is clear nothing more can be learned, so a user fixes a dataset in one round
instead of one error per run.

Decoding (see ``images.py``): a JPEG cut short before its end-of-image marker is kept, decoded
with the marker appended in memory, and listed as repaired; an image that does not decode at all
is left out and listed. With ``strict`` both are errors. A missing image file is always an error
(the paths are wrong, not the image).

Each image file is one record: the same file under two records (two VOC XML files, two COCO image
ids, two parts) is an error naming both, as it could be split into train and val at once. A box
past the image edge is clipped and counted, unless it is past by no more than the rounding of the
file's numbers (``EDGE_SLACK_PX``, ``EDGE_SLACK_OF_SIDE``): then it is clipped without a count.

Split, in order of precedence (``splits.py``; test never trains, picks an epoch or ranks a trial):

1. what the dataset says: the parts of an export (``train/``, ``valid/``, ``test/``; data.yaml's
   ``train``/``val``/``test``; split words in COCO file names), or VOC ``ImageSets/Main`` lists
   (see ``voc.py``; images listed in none of them are left out and listed);
2. ``val_source`` (the whole second dataset is val; then VOC train/val lists are ignored) and
   ``test_source`` (the whole third dataset is test); either one clashing with a split the
   dataset already has is a ``ConfigError``;
3. images whose split is still open become val with ``val_fraction``, when nothing above gave a
   val split: ``numpy.random.default_rng(seed)`` permutes them in image-id order (the same ids
   for the same seed, whatever ``test_fraction`` is);
4. ``test_fraction`` (of all images, rounded; 0 by default) is then drawn from the train images
   with its own generator, ``numpy.random.default_rng((seed, 1))``, so the val split above stays
   as it was; it is a ``ConfigError`` when the dataset has a test split already.

Image ids: COCO ids are kept; VOC and YOLO images are numbered 1..N in manifest order (sorted XML
names, or image paths, part after part). A later part's COCO ids (val, test) keep theirs unless
one collides with an earlier part's id, in which case all of that part's ids are shifted past the
largest id so far. That is not a repair and is not listed: Roboflow numbers each file of an export
from 0, the ids are the manifest's own, and no file, box or result a user reads changes with them.

Said in the summary although nothing is wrong: YOLO polygon labels (segmentation exports) turned
into their bounding boxes, counted per image like a repair.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.data.coco import parse_coco
from trainables.data.images import NOT_FOUND, ImageProbe, annotated_frame, probe_image, transpose_boxes
from trainables.data.layouts import FORMATS, Layout, Part, find_layout
from trainables.data.records import (
    CONFIG_KEYS,
    ClassInfo,
    ImageRecord,
    Problems,
    RawBox,
    RawDataset,
    RawImage,
    Repairs,
    SettingNames,
)
from trainables.data.splits import NOT_LISTED, list_splits, split_settings, split_test_ids, split_val_ids
from trainables.data.voc import parse_voc
from trainables.data.yolo import NO_LABEL_FILE, parse_yolo
from trainables.errors import ConfigError

__all__ = ["FORMATS", "BuildResult", "build_records", "select_classes", "split_test_ids", "split_val_ids"]

CLIPPED = "box clipped to the image edge"
DEGENERATE = "box with zero or negative width or height dropped"
UNSELECTED = "box of a class not in `classes` dropped"
EXIF_ROTATED = "boxes moved to the EXIF-rotated frame (annotated on raw pixels)"
SIZE_MISMATCH = "recorded image size matches neither frame (real size used)"
POLYGON = "polygon label converted to its bounding box"
TAIL_RESTORED = "JPEG cut short before its end marker, decoded with the marker restored (file unchanged)"
UNDECODABLE = "image that cannot be decoded, left out"
UNANNOTATED = "image file that no .xml names, not used"
PLACEHOLDER = "placeholder category, not a class (no annotations; the supercategory of the others)"

# A box past the image edge by no more than this is the rounding of the file's numbers, not an
# annotation past the edge: it is clipped but not counted as a repair. 0.01 px covers pixel
# coordinates written to 2 decimals (COCO, VOC: x and w each off by up to 0.005 px); 1e-6 of the
# image side covers YOLO's normalised cx +- w/2 written to 6 decimals (labelImg, CVAT), each off
# by up to half a unit: 7.5e-7 of the side, 2.2e-4 px on a 297 px image.
EDGE_SLACK_PX = 0.01
EDGE_SLACK_OF_SIDE = 1e-6


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


def _parse(
    layout: Layout, part: Part, images_dir: Path | None, problems: Problems, repairs: Repairs
) -> RawDataset | None:
    if layout.format == "coco":
        raw = parse_coco(part.path, images_dir=images_dir, problems=problems, search_dirs=layout.image_dirs)
        for cid, name, _ in raw.skipped_categories if raw is not None else []:
            repairs.add(PLACEHOLDER, f"{name!r} (id {cid}) in {part.label}")
        return raw
    if layout.format == "voc":
        raw = parse_voc(part.path, images_dir=images_dir, problems=problems, xml_dir=part.xml_dir)
        for file_name in raw.unannotated:
            repairs.image(UNANNOTATED, file_name, dropped=True)
        return raw
    assert layout.base is not None
    raw, unlabelled = parse_yolo(part.path, names=list(layout.names), base=layout.base, problems=problems)
    for file_name in unlabelled:
        repairs.add(NO_LABEL_FILE, file_name)
    for image in raw.images:
        repairs.add(POLYGON, image.file_name, sum(box.polygon for box in image.boxes))
    return raw


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


def _annotated_xywh(boxes: list[RawBox], probe: ImageProbe, rotate: bool) -> np.ndarray:
    """The file's own [x, y, width, height] per box, (M, 4) float64, for evaluation.

    Annotations made on raw pixels move to the displayed frame like the training boxes; a quarter
    turn swaps width and height, which are carried over as written rather than recomputed.
    """
    xywh = np.array([b.annotated_xywh for b in boxes], dtype=np.float64).reshape(-1, 4)
    if not rotate or not len(xywh):
        return xywh
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    corner = transpose_boxes(xyxy, probe.orientation, probe.raw_size)[:, :2]
    return np.concatenate([corner, xywh[:, [3, 2]]], axis=1)


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

    # evaluation: every box of a chosen class as annotated, in the file's order, as pycocotools
    # reads the file (it keeps boxes past the edge and zero-size ones)
    eval_xywh = _annotated_xywh(chosen, probe, rotate)
    sizes = eval_xywh[:, 2:].tolist()
    eval_area = [b.area if b.area is not None else w * h for b, (w, h) in zip(chosen, sizes, strict=True)]

    # training: the boxes repaired, clipped to the image, zero-size ones dropped
    boxes = np.array([b.xyxy for b in chosen], dtype=np.float64).reshape(-1, 4)
    if rotate and len(chosen):
        boxes = transpose_boxes(boxes, probe.orientation, probe.raw_size)
        repairs.add(EXIF_ROTATED, name, len(chosen))
    side = np.array([width, height, width, height], dtype=np.float64)
    clipped = np.clip(boxes, 0.0, side)
    valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    slack = np.maximum(EDGE_SLACK_PX, EDGE_SLACK_OF_SIDE * side)  # the file's rounding: clipped, not counted
    past = ((boxes < -slack) | (boxes > side + slack)).any(axis=1)
    repairs.add(CLIPPED, name, int(np.count_nonzero(valid & past)))
    repairs.add(DEGENERATE, name, int(np.count_nonzero(~valid)))
    trained = [b for b, ok in zip(chosen, valid, strict=True) if ok]
    boxes = clipped[valid]
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area = [b.area if b.area is not None else a for b, a in zip(trained, box_area.tolist(), strict=True)]
    return ImageRecord(
        image_id=image_id,
        file_name=name,
        path=str(raw.path),
        width=int(width),
        height=int(height),
        boxes=boxes,
        labels=np.array([kept[b.name].label for b in trained], dtype=np.int64),
        category_ids=np.array([kept[b.name].dataset_id for b in trained], dtype=np.int64),
        iscrowd=np.array([b.iscrowd for b in trained], dtype=bool),
        area=np.array(area, dtype=np.float64),
        eval_xywh=eval_xywh,
        eval_category_ids=np.array([kept[b.name].dataset_id for b in chosen], dtype=np.int64),
        eval_iscrowd=np.array([b.iscrowd for b in chosen], dtype=bool),
        eval_area=np.array(eval_area, dtype=np.float64),
        eval_difficult=np.array([b.difficult for b in chosen], dtype=bool),
        split=split,
    )


def _number(parts: list[tuple[str, list[tuple[RawImage, str | None]]]]) -> None:
    """Assign image ids in manifest order (see the module docstring); ``parts``: (format, pairs)."""
    taken: set[int] = set()
    number = 0
    for index, (fmt, pairs) in enumerate(parts):
        images = [image for image, _ in pairs]
        if fmt != "coco":
            for image in images:
                number += 1
                image.image_id = number
            continue
        ids = {image.image_id for image in images}
        if index and taken & ids:
            shift = max(taken) + 1 - min(ids)  # type: ignore[type-var, operator]
            for image in images:
                image.image_id += shift  # type: ignore[operator]
        taken |= {image.image_id for image in images}  # type: ignore[misc]


def _probe_all(images: list[RawImage]) -> list[ImageProbe | str | None]:
    # Decoding releases the GIL, so threads overlap it; results come back in input order.
    paths = [image.path for image in images]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: probe_image(p) if p is not None else None, paths))


def _check_fraction(name: str, value: float) -> None:  # name: as the user sets it
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        raise ConfigError(f"{name} should be in [0, 1), got {value!r}")


def _layout_parts(
    layout: Layout, val_source, test_source, images_dir: Path | None, names: SettingNames
) -> list[tuple[Layout, Part, str | None]]:
    """Every part to read, with the split it gives: the dataset's own, then val_path's and test_path's."""
    if layout.format == "yolo" and images_dir is not None:
        raise ConfigError(
            f"{names.images_dir}: not used for YOLO datasets (data.yaml names the image folders); remove it"
        )
    parts: list[tuple[Layout, Part, str | None]] = [(layout, part, part.split) for part in layout.parts]
    for extra, split, key in ((val_source, "val", names.val_path), (test_source, "test", names.test_path)):
        if extra is None:
            continue
        own = [part.label for _, part, s in parts if s == split]
        if own:
            raise ConfigError(
                f"{key}: the dataset has its own {split} split ({', '.join(own)}); remove {key}"
            )
        other = find_layout(extra, layout.format, names=names)
        parts += [(other, part, split) for part in other.parts]
    if not any(s == "val" for _, _, s in parts):  # no val split given: train parts give the val_fraction pool
        parts = [(lay, part, None if s == "train" else s) for lay, part, s in parts]
    return parts


def _check_classes(raws: list[RawDataset], categories: list[tuple[int, str]], problems: Problems) -> None:
    train_names = {name for _, name in categories}
    listing = ", ".join(sorted(train_names))
    for raw in raws:
        for name in sorted({box.name for image in raw.images for box in image.boxes} - train_names):
            problems.add(raw.source, f"class {name!r}", f"not a class of the training set ({listing})")


def _check_unique(parts: list[tuple[str, list[tuple[RawImage, str | None]]]], problems: Problems) -> None:
    """Each image file once: under two records it would be in the dataset twice, and could be
    split into both train and val (a leak)."""
    seen: dict[Path, tuple[int, RawImage]] = {}  # image path -> (part, its first record)
    for index, (fmt, pairs) in enumerate(parts):
        for image, _split in pairs:
            if image.path is None:
                continue
            part, first = seen.setdefault(image.path, (index, image))
            if part != index:
                problems.add(
                    image.path, "image", f"in two parts of the dataset ({first.origin} and {image.origin})"
                )
            elif first is not image and fmt == "coco":
                problems.add(
                    image.origin,
                    f"image id {image.image_id} ({image.file_name})",
                    f"the same image file as image id {first.image_id} ({first.file_name}); "
                    "an image needs one entry, with all its annotations",
                )
            elif first is not image:  # VOC: two XML files; YOLO lists repeat none (see yolo.py)
                problems.add(
                    image.origin,
                    f"image {image.file_name!r}",
                    f"also annotated by {first.origin} (the same image file); an image needs one annotation file",
                )


def _decode_all(
    pairs: list[tuple[RawImage, str | None]],
    kept: dict[str, ClassInfo],
    repairs: Repairs,
    problems: Problems,
    *,
    strict: bool,
) -> tuple[list[ImageRecord], set[int]]:
    """Decode every image once and build its record (none once a problem is known); also the ids
    of the records whose split is still open. See the module docstring for the decoding policy."""
    records, pending = [], set()
    for (image, split), probe in zip(pairs, _probe_all([image for image, _ in pairs]), strict=True):
        where, record = image.path or image.origin, f"image id {image.image_id} ({image.file_name})"
        if isinstance(probe, str):
            if probe == NOT_FOUND or strict:
                problems.add(
                    where, record, probe + (f" ({problems.names.strict}: no image is left out)" if strict else "")
                )
            else:
                repairs.image(UNDECODABLE, image.file_name, dropped=True, detail=probe)
            continue
        if probe is None:  # no file: already a problem
            continue
        if probe.jpeg_tail_missing:
            if strict:
                problems.add(
                    where,
                    record,
                    "JPEG file is truncated (no end-of-image marker); it decodes with the "
                    f"marker restored, but {problems.names.strict} refuses repaired images",
                )
                continue
            repairs.image(TAIL_RESTORED, image.file_name, dropped=False)
        if not len(problems):
            built = _to_record(image, probe, kept, repairs, image.image_id, split or "train")  # type: ignore[arg-type]
            records.append(replace(built, jpeg_tail_missing=True) if probe.jpeg_tail_missing else built)
            if split is None:
                pending.add(built.image_id)
    return records, pending


def build_records(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    images_dir: str | os.PathLike | None = None,
    val_source: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    test_source: str | os.PathLike | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    classes: list[str] | None = None,
    rename: dict[str, str] | None = None,
    strict: bool = False,
    names: SettingNames = CONFIG_KEYS,
) -> BuildResult:
    """Parse, check, repair and split a dataset; see the module docstring.

    ``names``: how messages name the settings (the config's keys, or a command's flags).
    """
    _check_fraction(names.val_fraction, val_fraction)
    _check_fraction(names.test_fraction, test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"{names.val_fraction} + {names.test_fraction} should be below 1, got {val_fraction} + {test_fraction}"
        )
    layout = find_layout(source, format, names=names)
    img_dir = Path(images_dir).expanduser() if images_dir is not None else None
    to_read = _layout_parts(layout, val_source, test_source, img_dir, names)
    no_test_fraction = f"{names.test_fraction}: the dataset has a test split already"
    if test_fraction > 0 and any(s == "test" for _, _, s in to_read):
        raise ConfigError(f"{no_test_fraction}; set {names.test_fraction} to 0")
    problems, repairs = Problems(names), Repairs()
    raws = [(lay, part, split, _parse(lay, part, img_dir, problems, repairs)) for lay, part, split in to_read]
    if any(raw is None for *_, raw in raws):
        problems.raise_if_any(f"dataset {layout.root}")
    for *_, raw in raws:
        if not raw.images:  # type: ignore[union-attr]
            problems.add(raw.source, "dataset", "no images (no image entries or annotation files)")  # type: ignore[union-attr]
    main = [raw for lay, _, _, raw in raws if lay is layout]
    train = main[0]
    assert train is not None
    categories = train.categories
    if layout.format == "voc" and len(main) > 1:  # several XML folders: classes are all their names
        names = sorted({name for raw in main for _, name in raw.categories})  # type: ignore[union-attr]
        categories = list(enumerate(names, start=1))
    chosen = select_classes(
        categories, classes=classes, rename=rename, where=str(train.source), problems=problems
    )
    kept = dict(chosen)
    _check_classes([raw for *_, raw in raws[1:]], categories, problems)  # type: ignore[misc]

    parts: list[tuple[str, list[tuple[RawImage, str | None]]]] = []
    for lay, _, split, raw in raws:
        if raw.split_lists is not None and split is None:  # type: ignore[union-attr]
            pairs = list_splits(
                raw,
                val_given=val_source is not None,
                test_given=test_source is not None,  # type: ignore[arg-type]
                repairs=repairs,
            )
        else:
            pairs = [(image, split) for image in raw.images]  # type: ignore[union-attr]
        parts.append((lay.format, pairs))
    if test_fraction > 0 and any(split == "test" for _, pairs in parts for _, split in pairs):
        raise ConfigError(f"{no_test_fraction} (ImageSets/Main/test.txt); set {names.test_fraction} to 0")
    _check_unique(parts, problems)
    val_given = any(split == "val" for _, pairs in parts for _, split in pairs)
    _number(parts)
    pairs = [pair for _, part_pairs in parts for pair in part_pairs]
    records, pending = _decode_all(pairs, kept, repairs, problems, strict=strict)
    problems.raise_if_any(f"dataset {layout.root}")

    if not any(r.train_mask.any() for r in records):
        had = sum(len(image.boxes) for image, _ in pairs)
        why = " left after dropping unselected classes, crowd regions and empty boxes" if had else ""
        images = f"{len(records)} image" + ("" if len(records) == 1 else "s")
        problems.add(train.source, "dataset", f"{images} but no boxes{why}")
        for reason, entries in repairs.listed.items():
            if reason in (UNDECODABLE, NOT_LISTED):
                problems.add(train.source, reason, "; ".join(entries))
        problems.raise_if_any(f"dataset {train.source}")

    split = split_settings(layout, raws, val_source, test_source, val_fraction, seed)
    if pending and not val_given:
        val_ids = split_val_ids(sorted(pending), val_fraction=val_fraction, seed=seed)
        records = [replace(r, split="val") if r.image_id in val_ids else r for r in records]
        if split["method"] != "fraction":
            split.update(val_fraction=float(val_fraction), seed=int(seed))
    if test_fraction > 0:
        train_ids = [r.image_id for r in records if r.split == "train"]
        test_ids = split_test_ids(train_ids, total=len(records), test_fraction=test_fraction, seed=seed)
        records = [replace(r, split="test") if r.image_id in test_ids else r for r in records]
        split.update(test_fraction=float(test_fraction), seed=int(seed))
    records.sort(key=lambda r: r.image_id)
    source_name = str(train.source) if len(main) == 1 and layout.format != "yolo" else str(layout.root)
    return BuildResult(records, [info for _, info in chosen], repairs, layout.format, source_name, split)
