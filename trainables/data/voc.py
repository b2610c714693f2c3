"""Read Pascal VOC XML annotations (as labelImg and CVAT write them) into raw records.

A dataset folder ``root`` holds its XML files in one folder, ``xml_dir``: ``root`` itself (XML
beside the images) or any one subfolder (``Annotations/`` in VOC2007, ``annotations/`` or
``annots/`` in labelImg projects); ``trainables.data.layouts`` finds it by content.

An XML file's image is found by the XML's stem with any image extension, in ``images_dir`` when
given, then ``JPEGImages/``, ``images/`` or ``Images/``, then in ``xml_dir``, ``root`` and every
other subfolder of ``root`` (the one with the most matching names first); only when that fails is
``<filename>`` tried (labelImg copies it from the file it opened, which is often renamed later).
``<path>`` is ignored: it is the annotator's absolute path on their own machine. Missing images are
one problem, not one per file: when no XML file finds its image, what was searched; when some do
not, how many of how many, the first few, and where.

Split lists in ``root/ImageSets/Main``: ``train.txt`` + ``val.txt`` give train and val; otherwise
``trainval.txt`` (or ``train.txt`` alone) gives the images that ``val_fraction`` splits into
train and val. ``test.txt``, when there is one of these, gives the test split. Per-class lists
(``dog_train.txt``) are ignored. Coordinates are taken as written (VOC's 1-based pixel indices
are not shifted: the half-pixel offset is below annotation noise). ``<difficult>1</difficult>``
objects are training targets like any other (as in torchvision's VOC reference); evaluation
ignores them, as VOC's own does: neither a hit nor a miss.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from trainables.data.records import Problems, RawBox, RawDataset, RawImage, counted

__all__ = ["IMAGE_EXTENSIONS", "find_voc_annotations", "parse_voc"]

# Preference order when two images share a stem.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def find_voc_annotations(root: Path) -> Path | None:
    """The folder holding ``root``'s VOC XML files, or None when there is none."""
    for sub in ("Annotations", "annotations"):
        if (root / sub).is_dir() and any((root / sub).glob("*.xml")):
            return root / sub
    if any(root.glob("*.xml")):
        return root
    return None


def _images_in(folder: Path) -> list[Path]:
    """The image files of one folder, in the extension preference order, then by name."""
    files = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
    return sorted(files, key=lambda f: (IMAGE_EXTENSIONS.index(f.suffix.lower()), f.name))


def _image_dirs(
    root: Path, xml_dir: Path, images_dir: Path | None, stems: set[str]
) -> dict[Path, list[Path]]:
    """Folder -> its image files, in search order (see the module docstring)."""
    named = [root / n for n in ("JPEGImages", "images", "Images")]
    siblings = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    dirs: dict[Path, list[Path]] = {}
    for d in ([images_dir] if images_dir is not None else []) + named + [xml_dir, root] + siblings:
        if d.is_dir() and all(d.resolve() != u.resolve() for u in dirs):
            dirs[d] = _images_in(d)
    first = ([images_dir] if images_dir is not None else []) + named
    fixed = [d for d in dirs if d in first]
    rest = [d for d in dirs if d not in first]  # most matching stems first, stable otherwise
    rest.sort(key=lambda d: -len(stems & {f.stem for f in dirs[d]}))
    return {d: dirs[d] for d in fixed + rest}


def _index_images(dirs: dict[Path, list[Path]]) -> dict[str, Path]:
    """Stem -> image path; earlier folders first, then the extension preference order."""
    index: dict[str, Path] = {}
    for files in dirs.values():
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
        difficult = (obj.findtext("difficult") or "").strip() or "0"  # absent or empty: not difficult
        if difficult not in ("0", "1"):
            problems.add(xml, record, f"<difficult> should be 0 or 1, got {difficult!r}")
        elif all(math.isfinite(v) for v in coords):
            boxes.append(RawBox(xyxy=tuple(coords), name=name, difficult=difficult == "1"))  # type: ignore[arg-type]
    return boxes


def _parse_file(
    xml: Path, image_dirs: list[Path], index: dict[str, Path], problems: Problems, missing: list
) -> RawImage:
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
        missing.append((xml, f"image {filename or xml.stem!r}"))
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
    """{"train", "val"} or {"trainval"}, plus "test" when listed; and the list files used."""
    main = root / "ImageSets" / "Main"
    present = {n for n in ("train", "val", "trainval", "test") if (main / f"{n}.txt").is_file()}
    if {"train", "val"} <= present:
        use = {"train": "train", "val": "val"}
    elif "trainval" in present or "train" in present:
        use = {"trainval": "trainval" if "trainval" in present else "train"}
    else:
        return None, []
    if "test" in present:
        use["test"] = "test"
    lists = {split: _read_list(main / f"{name}.txt", known, problems) for split, name in use.items()}
    seen: dict[str, str] = {}
    for split, stems in lists.items():
        for stem in stems:
            if stem in seen and seen[stem] != split:
                problems.add(main / f"{use[split]}.txt", repr(stem), f"also listed in {use[seen[stem]]}.txt")
            seen.setdefault(stem, split)
    return lists, [str((main / f"{name}.txt").resolve()) for name in use.values()]


def _shown(folder: Path, root: Path) -> str:
    """A folder as a message names it: relative to ``root`` with a trailing slash, or "."."""
    if folder.resolve() == root.resolve():
        return "."
    return f"{folder.relative_to(root) if folder.is_relative_to(root) else folder}/"


def _report_missing(
    root: Path, xml_dir: Path, dirs: dict[Path, list[Path]], missing: list, total: int, problems: Problems
) -> None:
    """One problem for every XML file whose image is not found: the count first, then a few."""
    if not missing:
        return
    searched = ", ".join(f"{_shown(d, root)} ({len(files)} images)" for d, files in dirs.items())
    if total > 1 and len(missing) == total:  # the images are elsewhere
        problems.add(
            root,
            "images",
            f"{total} .xml files in {_shown(xml_dir, root)} but no image matched their names (or their <filename>) "
            f"in {searched}; set {problems.names.images_dir} to the folder holding the images",
        )
    elif len(missing) == 1:
        xml, record = missing[0]
        problems.add(xml, record, f"image file not found ({xml.stem}.* or its <filename>, in {searched})")
    else:  # a partial upload or copy
        examples = [f"{xml.name} ({record})" for xml, record in missing]
        what = f".xml files in {_shown(xml_dir, root)} name an image that is not found"
        problems.add(
            root,
            "images",
            counted(len(missing), total, what, examples) + f" (searched {searched}; the other "
            f"{total - len(missing)} images are there)",
        )


def parse_voc(
    root: Path, *, images_dir: Path | None, problems: Problems, xml_dir: Path | None = None
) -> RawDataset:
    """Parse a VOC dataset folder (``images_dir`` is searched first); problems go to ``problems``.

    ``xml_dir``: the folder of XML files (default: ``find_voc_annotations(root)``). Images come in
    sorted XML-name order with ``image_id`` None: the manifest numbers them once it knows which
    ones it keeps.
    """
    xml_dir = xml_dir or find_voc_annotations(root) or root
    xml_files = sorted(xml_dir.glob("*.xml"))
    dirs = _image_dirs(root, xml_dir, images_dir, {xml.stem for xml in xml_files})
    index = _index_images(dirs)
    missing: list = []
    images = [_parse_file(xml, list(dirs), index, problems, missing) for xml in xml_files]
    _report_missing(root, xml_dir, dirs, missing, len(xml_files), problems)
    names = sorted({box.name for image in images for box in image.boxes})
    split_lists, split_files = _split_lists(root, {image.key for image in images}, problems)
    return RawDataset(
        format="voc",
        source=root.resolve(),
        images=images,
        categories=[(i, name) for i, name in enumerate(names, start=1)],
        split_lists=split_lists,
        split_files=split_files,
        unannotated=_unannotated(root, dirs, images),
    )


def _unannotated(root: Path, dirs: dict[Path, list[Path]], images: list[RawImage]) -> list[str]:
    """Image files beside the matched ones that no XML file names (labelImg writes no XML for an
    image that was skipped), relative to ``root``: listed, so that no image goes unmentioned."""
    used = {image.path for image in images if image.path is not None}
    folders = {path.parent for path in used}
    unused = [f.resolve() for d, files in dirs.items() if d.resolve() in folders for f in files]
    top = root.resolve()
    left = [f for f in dict.fromkeys(unused) if f not in used]
    return sorted(str(f.relative_to(top) if f.is_relative_to(top) else f) for f in left)
