"""Read a COCO detection JSON (``images``, ``annotations``, ``categories``) into raw records.

Image files are looked up, in this order, at ``images_dir / file_name`` when ``images_dir`` is
given; otherwise at ``<json dir> / file_name``, then ``<json dir> / images / file_name`` and
``<json dir>/../images / file_name`` (the layouts the demo dataset and CVAT's COCO export write),
then in the image folders the layout search found under the dataset folder (``search_dirs``,
e.g. COCO's own ``annotations/`` + ``val2017/``), each place once. Missing image files are one
problem, not one per image: when none is found, that the folder is wrong; when some are (a partial
upload), how many of how many the JSON lists are missing, the first few, and where they were
looked for. A category that no annotation uses and that every other
category names as its supercategory is the dataset's name, not a class (Roboflow writes one, id
0, into its COCO exports): it is left out of the classes and listed in the summary.
COCO boxes are ``[x, y, width, height]`` in pixels; they become xyxy here for training, and the
file's own four numbers are kept for evaluation. Annotations stay in the file's order (pycocotools
breaks score ties by it). Nothing is repaired here: problems are collected, repairs happen once
the real image sizes are known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainables.data.records import Problems, RawBox, RawDataset, RawImage, counted

__all__ = ["parse_coco"]


def _is_number(value: Any) -> bool:
    # JSON booleans are ints to Python; a coordinate of `true` is a mistake, not 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json(path: Path, problems: Problems) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, "file", f"cannot read annotations: {exc}")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(path, "file", f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return None


def _list_field(data: dict, key: str, path: Path, problems: Problems, *, required: bool) -> list:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        problems.add(path, f"'{key}'", f"should be a list, got {type(value).__name__}")
        return []
    return value


def _parse_categories(entries: list, path: Path, problems: Problems) -> dict[int, str]:
    categories: dict[int, str] = {}
    for i, cat in enumerate(entries):
        record = f"category #{i}"
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            problems.add(path, record, "needs an integer 'id' and a string 'name'")
            continue
        cid, name = cat["id"], cat["name"].strip()
        if cid in categories:
            problems.add(path, f"category id {cid}", "duplicate category id")
        elif name in categories.values():
            problems.add(path, f"category id {cid}", f"duplicate category name {name!r}")
        else:
            categories[cid] = name
    return categories


def _image_folders(json_dir: Path, images_dir: Path | None, search_dirs: tuple[Path, ...]) -> list[Path]:
    """Where a file name is looked for, in order, each folder once (the JSON's own folder is often
    one of the image folders found too)."""
    if images_dir is not None:
        return [images_dir]
    near = [json_dir, json_dir / "images", json_dir.parent / "images"]
    return list(dict.fromkeys(near + list(search_dirs)))


def _parse_image(
    entry: Any,
    i: int,
    path: Path,
    folders: list[Path],
    problems: Problems,
    missing: list[str],
) -> RawImage | None:
    if not isinstance(entry, dict) or not _is_int(entry.get("id")):
        problems.add(path, f"image #{i}", "needs an integer 'id'")
        return None
    image_id = entry["id"]
    file_name = entry.get("file_name")
    record = f"image id {image_id}"
    if not isinstance(file_name, str) or not file_name:
        problems.add(path, record, "needs a string 'file_name'")
        return None
    record = f"image id {image_id} ({file_name})"
    size = None
    width, height = entry.get("width"), entry.get("height")
    if width is not None or height is not None:
        if not (_is_number(width) and _is_number(height)):
            problems.add(path, record, f"non-numeric width/height {width!r} x {height!r}")
        elif width > 0 and height > 0:
            size = (int(round(width)), int(round(height)))
    found = next((d / file_name for d in folders if (d / file_name).is_file()), None)
    if found is None:
        missing.append(record)
    return RawImage(
        key=str(image_id),
        image_id=image_id,
        file_name=file_name,
        path=found.resolve() if found is not None else None,
        recorded_size=size,
        origin=str(path),
    )


def _parse_annotation(
    ann: Any, i: int, path: Path, images: dict[int, RawImage], categories: dict[int, str], problems: Problems
) -> None:
    if not isinstance(ann, dict):
        problems.add(path, f"annotation #{i}", "should be an object")
        return
    record = f"annotation id {ann['id']}" if "id" in ann else f"annotation #{i}"
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    ok = True
    if not _is_int(image_id) or image_id not in images:
        problems.add(path, record, f"unknown image id {image_id!r}")
        ok = False
    if not _is_int(category_id) or category_id not in categories:
        known = ", ".join(str(c) for c in sorted(categories))
        problems.add(path, record, f"unknown category id {category_id!r} (known: {known})")
        ok = False
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        problems.add(path, record, f"'bbox' should be [x, y, width, height], got {bbox!r}")
        ok = False
    elif not all(_is_number(v) for v in bbox):
        problems.add(path, record, f"non-numeric coordinates in bbox {bbox!r}")
        ok = False
    area = ann.get("area")
    if area is not None and not _is_number(area):
        problems.add(path, record, f"non-numeric area {area!r}")
        ok = False
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # True/False compare equal to 1/0
        problems.add(path, record, f"'iscrowd' should be 0 or 1, got {iscrowd!r}")
        ok = False
    if not ok:
        return
    x, y, w, h = (float(v) for v in bbox)
    images[image_id].boxes.append(
        RawBox(
            xyxy=(x, y, x + w, y + h),
            name=categories[category_id],
            iscrowd=bool(iscrowd),
            area=float(area) if area is not None else None,
            xywh=(x, y, w, h),
        )
    )


def _placeholders(
    cat_entries: list, categories: dict[int, str], used: set[str]
) -> list[tuple[int, str, str]]:
    """Categories that are the dataset's name, not a class: no annotation uses one, and every other
    category names it as its supercategory (Roboflow's COCO exports write one, with id 0)."""
    supers = {
        c["id"]: c.get("supercategory")
        for c in cat_entries
        if isinstance(c, dict) and c.get("id") in categories
    }
    found = []
    for cid, name in categories.items():
        others = [s for other, s in supers.items() if other != cid]
        if name not in used and others and all(s == name for s in others):
            found.append(
                (cid, name, "placeholder category (the other categories' supercategory, no annotations)")
            )
    return found


def _report_missing(
    path: Path, missing: list[str], total: int, folders: list[Path], problems: Problems
) -> None:
    """One problem for every missing image file: the count first, then a few of them."""
    if not missing:
        return
    looked = ", ".join(str(d) for d in folders)
    if total > 1 and len(missing) == total:  # the folder is wrong, not the files
        problems.add(
            path,
            "images",
            f"none of its {total} image files was found (e.g. {missing[0]}; looked in {looked}); "
            f"set {problems.names.images_dir} to the folder that holds them",
        )
    elif len(missing) == 1:
        problems.add(path, missing[0], f"image file not found (looked in {looked})")
    else:  # a partial upload or copy
        problems.add(
            path,
            "images",
            counted(len(missing), total, "images the JSON lists are missing", missing)
            + f" (looked in {looked}; the other {total - len(missing)} are there)",
        )


def parse_coco(
    path: Path, *, images_dir: Path | None, problems: Problems, search_dirs: tuple[Path, ...] = ()
) -> RawDataset | None:
    """Parse a COCO JSON file; problems go to ``problems``. None when the file cannot be read.

    ``search_dirs``: further folders where image files are looked for (after the usual places),
    the image folders found around the JSON file.
    """
    data = _load_json(path, problems)
    if data is None:
        return None
    if not isinstance(data, dict):
        problems.add(path, "file", f"top level should be an object, got {type(data).__name__}")
        return None
    cat_entries = _list_field(data, "categories", path, problems, required=True)
    image_entries = _list_field(data, "images", path, problems, required=True)
    ann_entries = _list_field(data, "annotations", path, problems, required=False)
    categories = _parse_categories(cat_entries, path, problems)

    images: dict[int, RawImage] = {}
    missing: list[str] = []  # "image id 7 (a.jpg)" per image whose file is not found
    folders = _image_folders(path.parent, images_dir, search_dirs)
    for i, entry in enumerate(image_entries):
        image = _parse_image(entry, i, path, folders, problems, missing)
        if image is None:
            continue
        if image.image_id in images:
            problems.add(path, f"image id {image.image_id}", "duplicate image id")
            continue
        images[image.image_id] = image  # type: ignore[index]
    _report_missing(path, missing, len(image_entries), folders, problems)
    for i, ann in enumerate(ann_entries):
        _parse_annotation(ann, i, path, images, categories, problems)
    skipped = _placeholders(
        cat_entries, categories, {b.name for image in images.values() for b in image.boxes}
    )
    for cid, _, _ in skipped:
        del categories[cid]

    return RawDataset(
        format="coco",
        source=path.resolve(),
        images=[images[k] for k in sorted(images)],
        categories=sorted(categories.items()),
        skipped_categories=skipped,
    )
