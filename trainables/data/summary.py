"""What a manifest holds, in numbers (``DataSummary``) and in words (``summarize``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from trainables.data.records import ClassInfo, ImageRecord, Repairs

__all__ = ["DataSummary", "compute_summary", "summarize", "SIZE_BINS"]

# COCO's object size ranges, by box area in px^2: small < 32^2 <= medium < 96^2 <= large.
SIZE_BINS = ("small", "medium", "large")
_SMALL_MAX, _MEDIUM_MAX = 32.0**2, 96.0**2


@dataclass
class DataSummary:
    """Counts over a manifest; ``dataclasses.asdict`` gives plain JSON.

    Box counts are training boxes (crowd regions are counted apart in ``crowd_boxes``); a negative
    is an image without any training box. ``images_per_split`` has "train" and "val", and "test"
    when there is a test split. ``repairs`` maps each reason to how often it applied, ``examples``
    to the first few file names it applied to; ``listed`` maps the reasons that apply to whole
    images (repaired, or left out of the manifest) to every file name; ``dropped`` counts the
    images left out.
    """

    images: int = 0
    images_per_split: dict[str, int] = field(default_factory=dict)
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    negatives: int = 0
    crowd_boxes: int = 0
    box_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    repairs: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    listed: dict[str, list[str]] = field(default_factory=dict)
    dropped: int = 0

    @property
    def boxes(self) -> int:
        return sum(self.boxes_per_class.values())

    @property
    def classes_without_boxes(self) -> list[str]:
        """Classes the dataset declares that no training box uses (a CVAT export declares every
        label of its project): the model learns them all the same, and their per-class AP is NaN."""
        return [name for name, count in self.boxes_per_class.items() if count == 0]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSummary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _size_bin(area: float) -> str:
    if area < _SMALL_MAX:
        return "small"
    return "medium" if area < _MEDIUM_MAX else "large"


def compute_summary(records: list[ImageRecord], classes: list[ClassInfo], repairs: Repairs) -> DataSummary:
    """Count images, boxes per class and size, negatives and crowd regions; attach the repairs."""
    names = {c.label: c.name for c in classes}
    boxes_per_class = {c.name: 0 for c in classes}
    box_sizes = {c.name: dict.fromkeys(SIZE_BINS, 0) for c in classes}
    per_split = {"train": 0, "val": 0}  # "test" added when there is one
    negatives = crowd = 0
    for record in records:
        per_split[record.split] = per_split.get(record.split, 0) + 1
        train = record.train_mask
        crowd += int(np.count_nonzero(~train))
        if not train.any():
            negatives += 1
        for label, area in zip(record.labels[train].tolist(), record.area[train].tolist(), strict=True):
            boxes_per_class[names[label]] += 1
            box_sizes[names[label]][_size_bin(area)] += 1
    return DataSummary(
        images=len(records),
        images_per_split=per_split,
        boxes_per_class=boxes_per_class,
        negatives=negatives,
        crowd_boxes=crowd,
        box_sizes=box_sizes,
        repairs=dict(repairs.counts),
        examples={k: list(v) for k, v in repairs.examples.items()},
        listed={k: list(v) for k, v in repairs.listed.items()},
        dropped=repairs.dropped,
    )


class _Summarised(Protocol):
    """What :func:`summarize` reads of a manifest (a Protocol: manifest.py imports this module, not the reverse)."""

    summary: DataSummary
    source: str
    format: str
    split_settings: dict[str, Any]
    num_classes: int
    classes: list[ClassInfo]


def _split_line(settings: dict[str, Any]) -> str:
    method = settings.get("method")
    said = []
    if method == "val_source":
        said.append(f"validation set from {settings.get('val_source')}")
    elif method == "imagesets":
        said.append("from the ImageSets lists " + ", ".join(settings.get("lists", [])))
    elif method == "layout":
        parts = settings.get("parts", {}).items()
        said.append(
            "from the dataset's parts: "
            + ", ".join(f"{label} ({split or 'train + val'})" for label, split in parts)
        )
    if "val_fraction" in settings:
        word = "random" if method == "fraction" else "random val"
        said.append(f"{word}, val_fraction {settings.get('val_fraction')}, seed {settings.get('seed')}")
    if settings.get("test_source"):
        said.append(f"test set from {settings['test_source']}")
    if settings.get("test_fraction"):
        said.append(f"random test, test_fraction {settings['test_fraction']}, seed {settings.get('seed')}")
    return "; ".join(said)


def summarize(manifest: _Summarised) -> str:
    """A multi-line report of a manifest: source, split, classes with box counts, and repairs."""
    s = manifest.summary
    lines = [
        f"Source: {manifest.source} ({manifest.format})",
        f"Images: {s.images} (train {s.images_per_split.get('train', 0)}, val {s.images_per_split.get('val', 0)}, "
        f"test {s.images_per_split.get('test', 0)})"
        + (f", {s.dropped} left out (listed below)" if s.dropped else ""),
        f"Split: {_split_line(manifest.split_settings)}",
        f"Classes: {manifest.num_classes}, boxes: {s.boxes}",
    ]
    width = max([len(c.name) for c in manifest.classes] + [4])
    lines.append(
        f"  {'label':>5}  {'id':>6}  {'name':<{width}}  {'boxes':>6}  {'small':>6}  {'medium':>6}  {'large':>6}"
    )
    for c in manifest.classes:
        sizes = s.box_sizes.get(c.name, {})
        counts = "  ".join(f"{sizes.get(b, 0):>6}" for b in SIZE_BINS)
        lines.append(
            f"  {c.label:>5}  {c.dataset_id:>6}  {c.name:<{width}}  {s.boxes_per_class.get(c.name, 0):>6}  {counts}"
        )
    empty = s.classes_without_boxes
    if empty:
        used = ", ".join(name for name, count in s.boxes_per_class.items() if count)
        lines.append(
            f"Classes without boxes: {len(empty)} of {manifest.num_classes} ({', '.join(empty)}): the model "
            "still predicts them, and their per-class AP is NaN; data.classes keeps a chosen subset"
            + (f" (data.classes: [{used}])" if used else "")
        )
    lines.append(f"Negatives (images without boxes, kept): {s.negatives}")
    lines.append(f"Crowd boxes (kept for evaluation, not trained on): {s.crowd_boxes}")
    if not s.repairs:
        lines.append("Repaired or dropped: nothing")
    else:
        lines.append("Repaired or dropped:")
        for reason, count in s.repairs.items():
            if reason in s.listed:  # whole images: every one of them, by name
                lines.append(f"  {reason}: {count}")
                lines += [f"    {entry}" for entry in s.listed[reason]]
            else:
                examples = ", ".join(s.examples.get(reason, []))
                lines.append(f"  {reason}: {count} (e.g. {examples})")
    return "\n".join(lines)
