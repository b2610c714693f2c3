"""What the dataset layer passes around: per-image records, classes, and the error/repair ledgers.

Parsers (``coco.py``, ``voc.py``) produce ``RawImage``s (annotations as the file states them);
the manifest builder checks them against the real images and turns them into ``ImageRecord``s,
the one internal record per image that everything after it (training, evaluation, export) reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.errors import DataError

__all__ = ["ClassInfo", "ImageRecord", "RawBox", "RawImage", "RawDataset", "Problems", "Repairs"]

# How many problems one DataError lists before "... and N more".
MAX_SHOWN_PROBLEMS = 20
# How many file names the summary keeps per repair reason.
MAX_EXAMPLES = 5


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

    ``boxes`` are xyxy pixels, float32, shape (N, 4); ``labels`` are 1..K (int64);
    ``category_ids`` the dataset's own ids; ``iscrowd`` marks COCO crowd regions, which evaluation
    treats as ignore regions and training never uses as targets; ``area`` is COCO's ``area`` where
    the file gives it, else the box's width * height.
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
    split: str = "train"

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


@dataclass
class RawImage:
    """An image entry as an annotation file states it, with its resolved path (None if missing)."""

    key: str  # VOC: the XML stem (what ImageSets lists name); COCO: str(image id)
    image_id: int | None  # COCO id; VOC images are numbered after sorting
    file_name: str
    path: Path | None
    recorded_size: tuple[int, int] | None  # (width, height) the annotation file records
    origin: str  # file the entry came from, for messages
    boxes: list[RawBox] = field(default_factory=list)


@dataclass
class RawDataset:
    """A parsed dataset: its images, its classes (dataset id, name) in stable order, split lists."""

    format: str  # "coco" or "voc"
    source: Path  # the annotations file (COCO) or the dataset folder (VOC)
    images: list[RawImage]
    categories: list[tuple[int, str]]
    # VOC ImageSets/Main lists used for the split ({"train": stems, "val": stems}), if any
    split_lists: dict[str, list[str]] | None = None
    split_files: list[str] = field(default_factory=list)


class Problems:
    """Collects every problem found in a dataset, to raise them together as one DataError."""

    def __init__(self) -> None:
        self.messages: list[str] = []

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
    """Counts what was repaired or dropped, by reason, with the first few file names for each."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, file_name: str, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[reason] = self.counts.get(reason, 0) + count
        names = self.examples.setdefault(reason, [])
        if file_name not in names and len(names) < MAX_EXAMPLES:
            names.append(file_name)
