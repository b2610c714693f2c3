"""Read Pascal VOC XML annotations (as labelImg and CVAT write them) into raw records.

Layouts understood, for a dataset folder ``root``:

* XML files beside the images, all in ``root``;
* ``root/Annotations/*.xml`` + ``root/JPEGImages/`` (VOC2007), with optional
  ``root/ImageSets/Main/{train,val}.txt`` split lists;
* ``root/annotations/*.xml`` + ``root/images/`` (labelImg projects such as the raccoon set).

An XML file's image is found by the XML's stem with any image extension, in ``images_dir`` when
given, then the images folder, then beside the XML, then in ``root``; only when that fails is ``<filename>`` tried (labelImg
copies it from the file it opened, which is often renamed later). ``<path>`` is ignored: it is
the annotator's absolute path on their own machine.

Split lists: ``train.txt`` + ``val.txt`` are used when both exist; otherwise ``trainval.txt`` +
``test.txt`` (as train and val) when both exist; otherwise no list is used. Per-class lists
(``dog_train.txt``) are ignored. Coordinates are taken as written (VOC's 1-based pixel indices
are not shifted: the half-pixel offset is below annotation noise). ``difficult`` objects are
kept as ordinary boxes.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from trainables.data.records import Problems, RawBox, RawDataset, RawImage

__all__ = ["IMAGE_EXTENSIONS", "find_voc_annotations", "parse_voc"]

# Preference order when two images share a stem.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPLIT_LIST_PAIRS = (("train.txt", "val.txt"), ("trainval.txt", "test.txt"))


def find_voc_annotations(root: Path) -> Path | None:
    """The folder holding ``root``'s VOC XML files, or None when there is none."""
    for sub in ("Annotations", "annotations"):
        if (root / sub).is_dir() and any((root / sub).glob("*.xml")):
            return root / sub
    if any(root.glob("*.xml")):
        return root
    return None


def _image_dirs(root: Path, xml_dir: Path, images_dir: Path | None) -> list[Path]:
    dirs = [root / n for n in ("JPEGImages", "images", "Images")] + [xml_dir, root]
    if images_dir is not None:
        dirs.insert(0, images_dir)
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(d.resolve() != u.resolve() for u in unique):
            unique.append(d)
    return unique


def _index_images(dirs: list[Path]) -> dict[str, Path]:
    """Stem -> image path; earlier folders first, then the extension preference order."""
    index: dict[str, Path] = {}
    for d in dirs:
        files = [f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
        files.sort(key=lambda f: (IMAGE_EXTENSIONS.index(f.suffix.lower()), f.name))
        for f in files:
            index.setdefault(f.stem, f)
    return index


def _size(root: ET.Element) -> tuple[int, int] | None:
    try:
        width = float(root.findtext("size/width", ""))
        height = float(root.findtext("size/height", ""))
    except ValueError:
        return None  # absent or blank: labelImg writes 0 or nothing when it could not tell
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        return None
    return int(round(width)), int(round(height))


def _parse_objects(root: ET.Element, xml: Path, problems: Problems) -> list[RawBox]:
    boxes = []
    for i, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        record = f"object {i} ({name!r})" if name else f"object {i}"
        if not name:
            problems.add(xml, record, "no <name>")
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            problems.add(xml, record, "no <bndbox>")
            continue
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = bndbox.findtext(key)
            try:
                value = float(text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                problems.add(xml, record, f"non-numeric coordinate <{key}>{text}</{key}>")
            coords.append(value)
        if all(math.isfinite(v) for v in coords):
            boxes.append(RawBox(xyxy=tuple(coords), name=name))  # type: ignore[arg-type]
    return boxes


def _parse_file(xml: Path, image_dirs: list[Path], index: dict[str, Path], problems: Problems) -> RawImage:
    image = RawImage(
        key=xml.stem, image_id=None, file_name=xml.stem, path=None, recorded_size=None, origin=str(xml)
    )
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        problems.add(xml, "file", f"malformed XML at line {line}, column {column}: {reason}")
        return image
    except OSError as exc:
        problems.add(xml, "file", f"cannot read annotations: {exc}")
        return image
    if root.tag != "annotation":
        problems.add(xml, "file", f"root element is <{root.tag}>, expected <annotation>")
        return image
    filename = (root.findtext("filename") or "").strip()
    found = index.get(xml.stem)
    if found is None and filename:
        found = next((d / filename for d in image_dirs if (d / filename).is_file()), None)
    if found is None:
        where = ", ".join(str(d) for d in image_dirs)
        problems.add(
            xml,
            f"image {filename or xml.stem!r}",
            f"image file not found ({xml.stem}.* or {filename!r} in {where})",
        )
    else:
        image.path, image.file_name = found.resolve(), found.name
    image.recorded_size = _size(root)
    image.boxes = _parse_objects(root, xml, problems)
    return image


def _read_list(path: Path, known: set[str], problems: Problems) -> list[str]:
    stems = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] not in known:
            problems.add(path, f"line {line_no}", f"{parts[0]!r} has no annotation file")
        else:
            stems.append(parts[0])
    return stems


def _split_lists(
    root: Path, known: set[str], problems: Problems
) -> tuple[dict[str, list[str]] | None, list[str]]:
    main = root / "ImageSets" / "Main"
    for train_name, val_name in _SPLIT_LIST_PAIRS:
        if (main / train_name).is_file() and (main / val_name).is_file():
            train = _read_list(main / train_name, known, problems)
            val = _read_list(main / val_name, known, problems)
            for stem in sorted(set(train) & set(val)):
                problems.add(main / val_name, repr(stem), f"listed in both {train_name} and {val_name}")
            files = [str((main / n).resolve()) for n in (train_name, val_name)]
            return {"train": train, "val": val}, files
    return None, []


def parse_voc(root: Path, *, images_dir: Path | None, problems: Problems) -> RawDataset:
    """Parse a VOC dataset folder (``images_dir`` is searched first); problems go to ``problems``.

    Images come in sorted XML-name order with ``image_id`` None: the manifest numbers them once it
    knows which ones it keeps.
    """
    xml_dir = find_voc_annotations(root)
    xml_files = sorted(xml_dir.glob("*.xml")) if xml_dir is not None else []
    image_dirs = _image_dirs(root, xml_dir or root, images_dir)
    index = _index_images(image_dirs)
    images = [_parse_file(xml, image_dirs, index, problems) for xml in xml_files]
    names = sorted({box.name for image in images for box in image.boxes})
    split_lists, split_files = _split_lists(root, {image.key for image in images}, problems)
    return RawDataset(
        format="voc",
        source=root.resolve(),
        images=images,
        categories=[(i, name) for i, name in enumerate(names, start=1)],
        split_lists=split_lists,
        split_files=split_files,
    )
