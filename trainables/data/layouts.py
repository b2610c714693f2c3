"""Which dataset layout a path holds, found by what the files contain, not by folder names.

A dataset folder is surveyed three levels down (hidden folders skipped) for the three kinds of
annotations boxtune reads:

* COCO: ``.json`` files holding an ``images`` list, anywhere (``annotations.json`` beside the
  images, CVAT's ``annotations/instances_default.json`` + ``images/``, COCO's own
  ``annotations/instances_val2017.json`` + ``val2017/``). Image files are looked for around the
  JSON and in every image folder found (``Layout.image_dirs``).
* Pascal VOC: ``.xml`` files whose root element is ``<annotation>``, in the folder itself or in
  any one subfolder (VOC2007's ``Annotations/``, labelImg's ``annots/``), with the images in any
  sibling folder (see ``voc.py``).
* YOLO: a ``.yaml`` with ``names`` (Ultralytics' and Roboflow's ``data.yaml``), in the folder or
  one level down; its ``train``/``val``/``test`` entries are the parts (see ``yolo.py``). When no
  layout fits and a ``.yaml`` there is malformed, the error is where its YAML breaks.

Splits that the layout itself states become parts with a split: several COCO JSONs or VOC XML
folders are told apart by a split word in the file name, else in the folder name (``train``,
``val``, ``valid``/``validation``, ``test``; ``instances_train2017.json``, Roboflow's
``valid/_annotations.coco.json``), one part per split and a training part required; anything
else is an error listing them. A part without a split (a single JSON) is split by
``val_fraction`` later. When a folder holds more than one kind, or none, the error says what was
seen and how to point boxtune at the right thing (``data.format``, ``data.images_dir``, or the
annotation file itself; ``boxtune data summary``'s flags when that command asks): a YOLO data.yaml
one or two folders up is named, and images alone are said to need their annotations beside them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainables.data.records import CONFIG_KEYS, Problems, SettingNames
from trainables.data.voc import IMAGE_EXTENSIONS
from trainables.data.yolo import read_data_yaml, yaml_has_names
from trainables.errors import ConfigError, DataError

__all__ = ["FORMATS", "Layout", "Part", "find_layout", "split_from_name"]

FORMATS = ("auto", "coco", "voc", "yolo")
SPLIT_ORDER = ("train", "val", "test")
_MAX_DEPTH = 3  # folder levels surveyed below the dataset folder
_FULL_JSON_CHECK = 64 * 2**20  # bytes; bigger JSON files are recognised by a peek at both ends
_PEEK = 2**20
# a split word not glued to other letters: "instances_train2017", "valid", not "trainval"
_SPLIT_WORDS = [
    ("val", re.compile(r"(?<![a-z])(valid|validation|val)(?![a-z])")),
    ("test", re.compile(r"(?<![a-z])test(?![a-z])")),
    ("train", re.compile(r"(?<![a-z])train(?![a-z])")),
]
_UP = 2  # folder levels above the dataset folder searched for a YOLO data.yaml, for the hint


def _hint(names: SettingNames) -> str:
    return (
        f"Point boxtune at it with {names.format} (coco, voc or yolo), {names.images_dir} (the image "
        f"folder), or {names.path} set to the annotation file itself (a COCO .json or a YOLO data.yaml)"
    )


@dataclass(frozen=True)
class Part:
    """One annotation source of a layout, and the split it gives (None: decided by val_fraction).

    ``path``: COCO the JSON file; VOC the dataset folder (ImageSets, image search); YOLO an image
    folder or list file. ``label`` names it for messages and the split settings.
    """

    path: Path
    split: str | None
    label: str
    xml_dir: Path | None = None  # VOC: the folder of XML files


@dataclass(frozen=True)
class Layout:
    format: str  # "coco", "voc" or "yolo"
    root: Path  # what the user named, resolved
    parts: tuple[Part, ...]
    image_dirs: tuple[Path, ...] = ()  # COCO: image folders found, searched for file names
    names: tuple[tuple[int, str], ...] = ()  # YOLO: the classes data.yaml names
    base: Path | None = None  # YOLO: the data.yaml's folder, file names are relative to it


@dataclass
class _Folder:
    path: Path
    depth: int
    images: int = 0
    xml: list[Path] = field(default_factory=list)
    json: list[Path] = field(default_factory=list)
    yaml: list[Path] = field(default_factory=list)
    txt: int = 0


def split_from_name(name: str) -> str | None:
    """ "train", "val" or "test" when exactly one split word is in ``name``, else None."""
    found = {split for split, pattern in _SPLIT_WORDS if pattern.search(name.lower())}
    return found.pop() if len(found) == 1 else None


def _survey(root: Path) -> list[_Folder]:
    folders = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        if depth >= _MAX_DEPTH:
            dirnames[:] = []
        folder = _Folder(here, depth)
        for name in sorted(filenames):
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                folder.images += 1
            elif suffix == ".xml":
                folder.xml.append(here / name)
            elif suffix == ".json":
                folder.json.append(here / name)
            elif suffix in (".yaml", ".yml"):
                folder.yaml.append(here / name)
            elif suffix == ".txt":
                folder.txt += 1
        folders.append(folder)
    return folders


def _is_voc_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"<annotation" in head


def _is_coco(path: Path) -> bool:
    """A JSON object with an ``images`` key (big files: the key seen near either end)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PEEK)
            if path.stat().st_size > _FULL_JSON_CHECK:
                f.seek(-_PEEK, 2)
                return b'"images"' in head or b'"images"' in f.read()
            data = json.loads(head + f.read())
    except (OSError, UnicodeDecodeError):
        return False
    except json.JSONDecodeError:
        return b'"images"' in head  # meant as COCO: parsing it will say where it breaks
    return isinstance(data, dict) and "images" in data


def _rel(path: Path, root: Path) -> str:
    if path == root:
        return "."
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _by_split(
    items: list[tuple[Path, str]], root: Path, what: str, names: SettingNames
) -> list[tuple[Path, str]]:
    """(path, split) per item, train first, or a DataError listing how each was read."""
    named = []
    for path, name in items:
        split = split_from_name(name)
        if (
            split is None and path.is_file() and path.parent != root
        ):  # Roboflow's train/_annotations.coco.json
            split = split_from_name(path.parent.name)
        named.append((path, split))
    splits = [s for _, s in named]
    if None in splits or len(set(splits)) != len(splits) or "train" not in splits:
        listing = ", ".join(f"{_rel(p, root)} ({s or 'split unknown'})" for p, s in named)
        raise DataError(
            f"{root}: {len(items)} {what} and no way to tell which is train, val and test: {listing}. "
            f"Name one split per file or folder (train, val/valid, test), or set {names.path} (and "
            f"{names.val_path}, {names.test_path}) to them"
        )
    return sorted(named, key=lambda item: SPLIT_ORDER.index(item[1]))  # type: ignore[arg-type]


def _coco_layout(root: Path, jsons: list[Path], folders: list[_Folder], names: SettingNames) -> Layout:
    image_dirs = tuple(f.path for f in sorted(folders, key=lambda f: (f.depth, str(f.path))) if f.images)
    if len(jsons) == 1:
        return Layout("coco", root, (Part(jsons[0], None, _rel(jsons[0], root)),), image_dirs)
    named = _by_split([(j, j.stem) for j in jsons], root, "COCO JSON files", names)
    parts = tuple(Part(j, split, _rel(j, root)) for j, split in named)
    return Layout("coco", root, parts, image_dirs)


def _voc_part(root: Path, xml_dir: Path, split: str | None) -> Part:
    # the dataset folder: where ImageSets and the image folders are, beside the XML folder
    if split is not None or xml_dir == root:
        base = xml_dir
    else:
        base = xml_dir.parent
    return Part(base, split, _rel(xml_dir, root), xml_dir=xml_dir)


def _voc_layout(root: Path, xml_dirs: list[Path], names: SettingNames) -> Layout:
    if len(xml_dirs) == 1:
        return Layout("voc", root, (_voc_part(root, xml_dirs[0], None),))
    named = _by_split([(d, d.name) for d in xml_dirs], root, "folders of VOC .xml files", names)
    return Layout("voc", root, tuple(_voc_part(root, d, split) for d, split in named))


def _yolo_layout(path: Path) -> Layout:
    problems = Problems()
    spec = read_data_yaml(path, problems)
    problems.raise_if_any(f"YOLO dataset {path}")
    assert spec is not None
    has_val = "val" in spec.splits
    parts = []
    for split in SPLIT_ORDER:
        for entry in spec.splits.get(split, []):
            given = split if has_val or split != "train" else None
            parts.append(Part(entry, given, f"{split}: {_rel(entry, path.parent.resolve())}"))
    return Layout("yolo", path.resolve(), tuple(parts), names=tuple(spec.names), base=path.parent.resolve())


def _yaml_above(root: Path) -> Path | None:
    """A YOLO data.yaml (a YAML with ``names``) one or two folders above ``root``: a user who
    names an export's ``train/`` or ``train/images/`` folder means the export."""
    for level, folder in enumerate(root.parents):
        if level >= _UP:
            return None
        for found in sorted(folder.glob("*.y*ml")):
            if found.suffix.lower() in (".yaml", ".yml") and yaml_has_names(found):
                return found
    return None


def _seen(root: Path, folders: list[_Folder], coco: list[Path], voc: list[Path], above: Path | None) -> str:
    """What a folder holds, in words, for the error when no layout fits."""
    seen = []
    for f in folders:
        where = _rel(f.path, root) + "/" if f.path != root else f"{root.name}/ itself"
        if f.xml and f.path not in voc:
            seen.append(f"{len(f.xml)} .xml files in {where} (not VOC: no <annotation> element)")
        others = [j for j in f.json if j not in coco]
        if others:
            seen.append(f"{', '.join(_rel(j, root) for j in others)} (JSON without a COCO 'images' list)")
        if f.yaml:
            seen.append(f"{', '.join(_rel(y, root) for y in f.yaml)} (YAML without YOLO 'names')")
        if f.txt and f.path.name == "labels" and above is None:
            seen.append(f"{f.txt} .txt files in {where} (YOLO labels? no data.yaml with names found)")
        elif f.txt and f.path.name == "labels":
            seen.append(f"{f.txt} .txt files in {where} (YOLO labels)")
        if f.images:
            seen.append(
                f"{f.images} images in {where}, their annotations expected beside them (a COCO .json, "
                "VOC .xml files, or a YOLO data.yaml with labels/)"
            )
    return "; ".join(seen) or "no image or annotation files"


def _near_image_dirs(json_path: Path) -> tuple[Path, ...]:
    """Image folders below a JSON file named directly (never beside its folder: that is outside
    what the user pointed at; ``images_dir`` says where else to look)."""
    here = json_path.resolve().parent
    return tuple(d for d in sorted(here.iterdir()) if d.is_dir() and not d.name.startswith("."))


def find_layout(source: str | os.PathLike, format: str = "auto", *, names: SettingNames = CONFIG_KEYS) -> Layout:
    """The layout of the dataset at ``source`` (a folder, a COCO .json or a YOLO data.yaml);
    ``names``: how messages name the settings (the config's keys, or a command's flags)."""
    if format not in FORMATS:
        raise ConfigError(f"format should be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: dataset not found")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json" and format in ("auto", "coco"):
            return Layout("coco", path.resolve(), (Part(path, None, path.name),), _near_image_dirs(path))
        if suffix in (".yaml", ".yml") and format in ("auto", "yolo"):
            return _yolo_layout(path)
        raise DataError(
            f"{path}: not a dataset for format={format!r}: expected a COCO .json file, a YOLO data.yaml "
            "or a dataset folder"
        )
    root = path.resolve()
    folders = _survey(root)
    coco = [j for f in folders for j in f.json if format in ("auto", "coco") and _is_coco(j)]
    voc = [f.path for f in folders if format in ("auto", "voc") and f.xml and _is_voc_xml(f.xml[0])]
    yamls = {
        y: yaml_has_names(y) for f in folders if f.depth <= 1 and format in ("auto", "yolo") for y in f.yaml
    }
    yolo = [y for y, has_names in yamls.items() if has_names]
    kinds = {"YOLO data.yaml": yolo, "COCO JSON": coco, "VOC XML folders": voc}
    found = {k: v for k, v in kinds.items() if v}
    if len(found) > 1:
        listing = "; ".join(f"{k}: {', '.join(_rel(p, root) for p in v)}" for k, v in found.items())
        raise DataError(f"{root}: holds more than one kind of annotations ({listing}); set {names.format}")
    if yolo:
        top = [y for y in yolo if y.parent == root and y.name in ("data.yaml", "data.yml")]
        if len(top) == 1 or len(yolo) == 1:
            return _yolo_layout((top or yolo)[0])
        listing = ", ".join(_rel(y, root) for y in yolo)
        raise DataError(f"{root}: several YOLO dataset files ({listing}); set {names.path} to the one to read")
    if coco:
        return _coco_layout(root, coco, folders, names)
    if voc:
        return _voc_layout(root, voc, names)
    broken = [y for y, has_names in yamls.items() if has_names is None]
    if broken:  # nothing else fits: say where the YAML breaks, as when the file is named
        problems = Problems()
        for path in broken:
            read_data_yaml(path, problems)
        problems.raise_if_any(f"YOLO dataset {broken[0] if len(broken) == 1 else root}")
    wanted = {"auto": "a dataset layout", "coco": "a COCO JSON", "voc": "VOC XML", "yolo": "a YOLO data.yaml"}
    above = _yaml_above(root) if format in ("auto", "yolo") else None
    found_text = f"found {_seen(root, folders, coco, voc, above)}"
    if above is not None:
        up = len(root.relative_to(above.parent).parts)
        raise DataError(
            f"{root}: cannot find {wanted[format]}: {found_text}. The YOLO dataset file is {above} "
            f"({'one folder' if up == 1 else f'{up} folders'} up): set {names.path} to it, or to its folder"
        )
    raise DataError(f"{root}: cannot find {wanted[format]}: {found_text}. {_hint(names)}")
