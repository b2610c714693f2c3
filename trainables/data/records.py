"""What the dataset layer passes around: per-image records, classes, and the error/repair ledgers.

Parsers (``coco.py``, ``voc.py``, ``yolo.py``) produce ``RawImage``s (annotations as the file states them);
the manifest builder checks them against the real images and turns them into ``ImageRecord``s,
the one internal record per image that everything after it (training, evaluation, export) reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.errors import DataError

__all__ = [
    "CONFIG_KEYS",
    "ClassInfo",
    "ImageRecord",
    "RawBox",
    "RawImage",
    "RawDataset",
    "Problems",
    "Repairs",
    "SettingNames",
    "SUMMARY_FLAGS",
    "counted",
]

# How many problems one DataError lists before "... and N more".
MAX_SHOWN_PROBLEMS = 20
# How many file names the summary keeps per repair reason, and the examples one counted line shows.
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class SettingNames:
    """How a message names the dataset settings, so that its hint is one the user can follow: the
    config's keys for a sweep or train config (``CONFIG_KEYS``), the flags of ``boxtune data summary``
    when that command reads the dataset (``SUMMARY_FLAGS``)."""

    path: str = "data.path"
    format: str = "data.format"
    images_dir: str = "data.images_dir"
    val_path: str = "data.val_path"
    test_path: str = "data.test_path"
    val_fraction: str = "data.val_fraction"
    test_fraction: str = "data.test_fraction"
    strict: str = "data.strict"


CONFIG_KEYS = SettingNames()
SUMMARY_FLAGS = SettingNames(
    path="the dataset path",
    format="--format",
    images_dir="--images-dir",
    val_path="--val-path",
    test_path="--test-path",
    val_fraction="--val-fraction",
    test_fraction="--test-fraction",
    strict="--strict",
)


def counted(n: int, total: int, what: str, examples: list[str]) -> str:
    """"203 of the 400 <what>; first 5: a, b, c, d, e": the count first, then a few examples, never all."""
    shown = ", ".join(examples[:MAX_EXAMPLES])
    if n > MAX_EXAMPLES:
        return f"{n} of the {total} {what}; first {MAX_EXAMPLES}: {shown}"
    return f"{n} of the {total} {what}: {shown}"


@dataclass(frozen=True)
class ClassInfo:
    """One class: its training label (1..K, 0 is background), its name, and its id in the dataset.

    ``dataset_id`` is the COCO category id, or for VOC the class's index (1-based) in the dataset's
    sorted class names; evaluation and export use it to speak the dataset's own ids.
    """

    label: int
    name: str
    dataset_id: int


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image and its boxes, in the frame the image is displayed in (EXIF orientation applied).

    Two views of the same annotations, because training and evaluation want different things:

    * training, repaired: ``boxes`` are xyxy pixels, float64, shape (N, 4), clipped to the image,
      with zero-size boxes dropped; ``labels`` are 1..K (int64); ``category_ids`` the dataset's
      own ids; ``iscrowd`` marks COCO crowd regions, which training never uses as targets;
      ``area`` is COCO's ``area`` where the file gives it, else the repaired box's width * height.
    * evaluation, as annotated (what pycocotools reads from the file): ``eval_xywh`` (M, 4) float64
      is the file's own [x, y, width, height] (VOC: xmin, ymin, xmax - xmin, ymax - ymin), neither
      clipped nor dropped, in the file's order; ``eval_area`` is the file's ``area``, else width *
      height of that box; ``eval_iscrowd``; ``eval_difficult`` marks VOC ``difficult`` objects,
      which evaluation ignores; ``eval_category_ids`` the dataset's ids. Only the EXIF transpose
      (annotations made on raw pixels) changes these numbers.
    """

    image_id: int
    file_name: str
    path: str  # absolute and resolved
    width: int  # px, as displayed (EXIF orientation applied)
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    eval_xywh: np.ndarray
    eval_category_ids: np.ndarray
    eval_iscrowd: np.ndarray
    eval_area: np.ndarray
    eval_difficult: np.ndarray
    split: str = "train"  # "train", "val" or "test" (test never trains or picks an epoch)
    # a JPEG cut short before its end-of-image marker: decoded with the marker appended in memory
    jpeg_tail_missing: bool = False

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def train_mask(self) -> np.ndarray:
        """Boxes a detector trains on: every box that is not a crowd region."""
        return ~self.iscrowd


@dataclass
class RawBox:
    """A box as an annotation file states it: xyxy in the annotator's frame, class by name."""

    xyxy: tuple[float, float, float, float]
    name: str
    iscrowd: bool = False
    area: float | None = None  # COCO 'area' when given
    difficult: bool = False  # VOC <difficult>1</difficult>
    # COCO's [x, y, width, height] exactly as written: x + width - x is not always width in
    # floating point, and evaluation must see the file's numbers; None: taken from ``xyxy``
    xywh: tuple[float, float, float, float] | None = None
    polygon: bool = False  # YOLO: a polygon (segmentation) label, ``xyxy`` its bounding box

    @property
    def annotated_xywh(self) -> tuple[float, float, float, float]:
        """[x, y, width, height] as the file states the box, for evaluation."""
        if self.xywh is not None:
            return self.xywh
        x1, y1, x2, y2 = self.xyxy
        return (x1, y1, x2 - x1, y2 - y1)


@dataclass
class RawImage:
    """An image entry as an annotation file states it, with its resolved path (None if missing)."""

    key: str  # VOC: the XML stem (what ImageSets lists name); COCO: str(image id); YOLO: the path
    image_id: int | None  # COCO id; VOC images are numbered after sorting
    file_name: str
    path: Path | None
    recorded_size: tuple[int, int] | None  # (width, height) the annotation file records
    origin: str  # file the entry came from, for messages
    boxes: list[RawBox] = field(default_factory=list)


@dataclass
class RawDataset:
    """A parsed dataset: its images, its classes (dataset id, name) in stable order, split lists."""

    format: str  # "coco", "voc" or "yolo"
    source: Path  # the annotations file (COCO), the dataset folder (VOC), the image folder or list (YOLO)
    images: list[RawImage]
    categories: list[tuple[int, str]]
    # VOC ImageSets/Main lists used for the split ({"train": stems, "val": stems, "test": stems};
    # "trainval": stems when only trainval.txt gives train and val together), if any
    split_lists: dict[str, list[str]] | None = None
    split_files: list[str] = field(default_factory=list)
    # VOC: image files in the folders the images were found in that no XML file names
    unannotated: list[str] = field(default_factory=list)
    # categories left out as not being classes: (dataset id, name, reason), e.g. the placeholder
    # category Roboflow writes into COCO exports
    skipped_categories: list[tuple[int, str, str]] = field(default_factory=list)


class Problems:
    """Collects every problem found in a dataset, to raise them together as one DataError.

    ``names``: how the messages name the settings a user can change (see ``SettingNames``).
    """

    def __init__(self, names: SettingNames = CONFIG_KEYS) -> None:
        self.messages: list[str] = []
        self.names = names

    def add(self, file: str | Path, record: str, message: str) -> None:
        self.messages.append(f"{file}: {record}: {message}")

    def __len__(self) -> int:
        return len(self.messages)

    def raise_if_any(self, what: str) -> None:
        if not self.messages:
            return
        n = len(self.messages)
        shown = "\n".join(f"  - {m}" for m in self.messages[:MAX_SHOWN_PROBLEMS])
        more = f"\n  ... and {n - MAX_SHOWN_PROBLEMS} more" if n > MAX_SHOWN_PROBLEMS else ""
        noun = "problem" if n == 1 else "problems"
        raise DataError(f"{n} {noun} in {what}:\n{shown}{more}")


class Repairs:
    """Counts what was repaired or dropped, by reason, with the first few file names for each.

    Whole images repaired or left out (``image``) are also listed by name, every one of them, so
    no image leaves the dataset without a line in the summary.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.listed: dict[str, list[str]] = {}  # reason -> every image it applied to
        self.dropped = 0  # images left out of the manifest

    def add(self, reason: str, file_name: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + count
        names = self.examples.setdefault(reason, [])
        if file_name not in names and len(names) < MAX_EXAMPLES:
            names.append(file_name)

    def image(self, reason: str, file_name: str, *, dropped: bool, detail: str | None = None) -> None:
        """One whole image repaired (``dropped`` False) or left out of the manifest: counted and listed."""
        self.add(reason, file_name)
        self.listed.setdefault(reason, []).append(f"{file_name}: {detail}" if detail else file_name)
        self.dropped += int(dropped)
