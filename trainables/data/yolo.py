"""Read YOLO txt labels (as Ultralytics and Roboflow write them) into raw records.

A YOLO dataset is described by a ``data.yaml``: ``names`` (a list, or a mapping of class index to
name), and ``train``, ``val``, ``test`` (each an image folder, a .txt file listing image paths,
or a list of these). Paths are resolved as Ultralytics resolves them: against the yaml's ``path``
key when given (relative to the yaml's folder), else against the yaml's folder; a path that does
not exist and starts with ``../`` is tried again without it. That is what makes a Roboflow
export's ``train: ../train/images`` (written for a yolov5 checkout beside the dataset) find
``<dataset>/train/images``.

Each image's label file is its path with the last ``images`` folder replaced by ``labels`` and
the suffix by ``.txt`` (Ultralytics' rule); without an ``images`` folder in the path, the .txt
beside the image. A missing label file is an image without objects (counted); so is an empty one.
A label file without its image, under the ``labels`` folder of an image folder (``images/train``
-> ``labels/train``), is an error naming it (labelImg's ``classes.txt`` excepted); a .txt list of
images is a chosen subset, and labels beside their images are not checked. A list naming an image
twice is an error.

A label line is ``class cx cy w h``: a class index into ``names`` and the box centre and size,
normalised to the image as displayed (EXIF orientation applied, as Ultralytics reads it). A line
with an even number (6 or more) of values after the class is a polygon (a segmentation export)
and becomes the polygon's bounding box, counted in the summary. Anything else is an error naming
the file and the line.
Boxes are in pixels here, from the image size its header gives; repairs (clipping) come later.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from trainables.data.records import Problems, RawBox, RawDataset, RawImage
from trainables.data.voc import IMAGE_EXTENSIONS

__all__ = [
    "NO_LABEL_FILE",
    "SPLIT_KEYS",
    "YoloSpec",
    "find_label_file",
    "parse_yolo",
    "read_data_yaml",
    "yaml_has_names",
]

SPLIT_KEYS = ("train", "val", "test")
NO_LABEL_FILE = "image without a label file (kept as an image without objects)"


@dataclass(frozen=True)
class YoloSpec:
    """What a data.yaml says: the classes (index, name) and, per split, its image folders or lists."""

    path: Path
    names: list[tuple[int, str]]
    splits: dict[str, list[Path]]


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _YamlError(f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise _YamlError(f"malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


class _YamlError(Exception):
    pass


def yaml_has_names(path: Path) -> bool | None:
    """Whether ``path`` is a YAML mapping with a ``names`` key (a YOLO data.yaml); None when it
    cannot be read or is malformed (``read_data_yaml`` says where)."""
    try:
        data = _load_yaml(path)
    except _YamlError:
        return None
    return isinstance(data, dict) and "names" in data


def _names(data: dict, path: Path, problems: Problems) -> list[tuple[int, str]]:
    raw = data.get("names")
    if isinstance(raw, list):
        pairs = list(enumerate(raw))
    elif isinstance(raw, dict):
        pairs = sorted(raw.items(), key=lambda kv: (not isinstance(kv[0], int), str(kv[0])))
    else:
        problems.add(
            path, "'names'", f"should be a list of class names or a mapping index: name, got {raw!r}"
        )
        return []
    names: list[tuple[int, str]] = []
    for index, name in pairs:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            problems.add(path, f"names[{index!r}]", "class indices should be integers >= 0")
        elif not isinstance(name, (str, int)) or not str(name).strip():
            problems.add(path, f"names[{index}]", f"should be a non-empty name, got {name!r}")
        elif str(name).strip() in {n for _, n in names}:
            problems.add(path, f"names[{index}]", f"duplicate class name {str(name).strip()!r}")
        else:
            names.append((index, str(name).strip()))
    nc = data.get("nc")
    if nc is not None and nc != len(pairs):
        problems.add(path, "'nc'", f"says {nc} classes but 'names' lists {len(pairs)}")
    return names


def _resolve(entry: str, base: Path, yaml_dir: Path) -> tuple[Path | None, list[Path]]:
    """(the existing path ``entry`` names, or None; the paths tried)."""
    tried = []
    for root in dict.fromkeys((base, yaml_dir)):
        candidates = [root / entry]
        if entry.startswith("../"):
            candidates.append(root / entry[3:])
        for candidate in candidates:
            tried.append(candidate)
            if candidate.exists():
                return candidate.resolve(), tried
    return None, tried


def read_data_yaml(path: Path, problems: Problems) -> YoloSpec | None:
    """Classes and split paths of a data.yaml; None when it cannot be read (problems say why)."""
    try:
        data = _load_yaml(path)
    except _YamlError as exc:
        problems.add(path, "file", str(exc))
        return None
    if not isinstance(data, dict):
        problems.add(path, "file", f"top level should be a mapping, got {type(data).__name__}")
        return None
    names = _names(data, path, problems)
    yaml_dir = path.parent.resolve()
    base = yaml_dir / str(data["path"]) if isinstance(data.get("path"), str) else yaml_dir
    splits: dict[str, list[Path]] = {}
    for key in SPLIT_KEYS:
        value = data.get(key)
        if value in (None, ""):
            continue
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            if not isinstance(entry, str):
                problems.add(path, f"'{key}'", f"should be a path or a list of paths, got {entry!r}")
                continue
            found, tried = _resolve(entry, base, yaml_dir)
            if found is None:
                problems.add(path, f"'{key}: {entry}'", f"not found (looked at {', '.join(map(str, tried))})")
            else:
                splits.setdefault(key, []).append(found)
    if data.get("train") in (None, ""):
        problems.add(path, "'train'", "missing: set train: to the training images (a folder or a list)")
    return YoloSpec(path.resolve(), names, splits)


def list_images(source: Path, problems: Problems) -> list[Path]:
    """The images of one split entry: a folder (searched recursively) or a .txt list of paths."""
    if source.is_dir():
        files = [f for f in source.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
        return sorted(f.resolve() for f in files)
    listed: dict[Path, int] = {}  # image -> the line that lists it
    for line_no, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        image = (source.parent / entry).resolve()
        if not image.is_file():
            problems.add(source, f"line {line_no}", f"image file not found: {image}")
        elif image in listed:
            problems.add(source, f"line {line_no}", f"{image} is listed twice (also line {listed[image]})")
        else:
            listed[image] = line_no
    return list(listed)


def find_label_file(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = image.parts
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        return Path(*parts[:i], "labels", *parts[i + 1 : -1], image.stem + ".txt")
    return image.with_suffix(".txt")


def _orphan_labels(source: Path, problems: Problems) -> None:
    """Label files without their image, under the ``labels`` folder of an image folder ``source``.

    Only a folder with ``images`` in its path has labels of its own to check (``images/train`` ->
    ``labels/train``): a .txt list is a chosen subset, and labels beside their images are not told
    apart from other .txt files. labelImg's ``classes.txt`` is not a label file.
    """
    if not source.is_dir() or "images" not in source.parts:
        return
    parts = source.parts
    i = len(parts) - 1 - parts[::-1].index("images")  # the last one, as ``find_label_file`` takes
    labels = Path(*parts[:i], "labels", *parts[i + 1 :])
    if not labels.is_dir():
        return
    # compared as paths below the two folders, so that relative and symlinked folders agree; any
    # file there counts, an image of a kind boxtune does not read (.heic) included: not an orphan
    stems = {(Path(top) / name).relative_to(source).with_suffix("")
             for top, _, names in os.walk(source, followlinks=True) for name in names}
    for label in sorted(labels.rglob("*.txt")):
        stem = label.relative_to(labels).with_suffix("")
        if label.name != "classes.txt" and label.is_file() and stem not in stems:
            problems.add(label, "file", f"label file without its image (no image file {source / stem}.*)")


def _displayed_size(image: Path) -> tuple[int, int] | None:
    """(width, height) with EXIF orientation applied, from the header only; None if unreadable."""
    try:
        with Image.open(image) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None  # the decode at build time names the file and drops or refuses it
    # quarter turns swap width and height, as ImageOps.exif_transpose does
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _parse_line(
    parts: list[str],
    names: dict[int, str],
    size: tuple[int, int],
    where: str,
    problems: Problems,
    label: Path,
) -> RawBox | None:
    try:
        index = int(parts[0])
    except ValueError:
        problems.add(label, where, f"class {parts[0]!r} should be an integer index into names")
        return None
    if index not in names:
        known = f"0..{max(names)}" if names else "none"
        problems.add(label, where, f"class index {index} is not in names ({known})")
        return None
    try:
        values = [float(v) for v in parts[1:]]
    except ValueError:
        problems.add(label, where, f"non-numeric value in {' '.join(parts)!r}")
        return None
    if not all(math.isfinite(v) for v in values):
        problems.add(label, where, f"non-finite value in {' '.join(parts)!r}")
        return None
    width, height = size
    if len(values) == 4:
        cx, cy, w, h = values
        xyxy = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    elif len(values) >= 6 and len(values) % 2 == 0:
        xs, ys = values[0::2], values[1::2]
        xyxy = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
    else:
        problems.add(
            label,
            where,
            f"expected 4 numbers (cx cy w h) or a polygon of 3 or more x y pairs, got {len(values)}",
        )
        return None
    return RawBox(xyxy=xyxy, name=names[index], polygon=len(values) > 4)


def _read_labels(
    label: Path, names: dict[int, str], size: tuple[int, int], problems: Problems
) -> list[RawBox]:
    try:
        text = label.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(label, "file", f"cannot read labels: {exc}")
        return []
    boxes = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if parts:
            box = _parse_line(parts, names, size, f"line {line_no}", problems, label)
            if box is not None:
                boxes.append(box)
    return boxes


def parse_yolo(
    source: Path, *, names: list[tuple[int, str]], base: Path, problems: Problems
) -> tuple[RawDataset, list[str]]:
    """Parse one split entry (folder or list); problems go to ``problems``.

    Returns the dataset and the file names of images without a label file. Images come in path
    order with ``image_id`` None; file names are relative to ``base`` (the data.yaml's folder).
    """
    by_index = dict(names)
    images, unlabelled = [], []
    paths = list_images(source, problems)
    _orphan_labels(source, problems)
    for path in paths:
        try:
            file_name = str(path.relative_to(base))
        except ValueError:
            file_name = str(path)
        image = RawImage(
            key=str(path),
            image_id=None,
            file_name=file_name,
            path=path,
            recorded_size=None,
            origin=str(source),
        )
        label = find_label_file(path)
        if not label.is_file():
            unlabelled.append(file_name)
        else:
            size = _displayed_size(path)
            if size is not None:
                image.recorded_size = size
                image.boxes = _read_labels(label, by_index, size, problems)
        images.append(image)
    dataset = RawDataset(format="yolo", source=source, images=images, categories=list(names))
    return dataset, unlabelled
