"""Decoded images kept in host memory across a trial's epochs: decode once, not once per epoch.

A trial reads every image once per epoch. Decoding a JPEG costs far more than the transforms
after it, and on a GPU it is what starves the model. The cache holds the decoded image (uint8,
3 x H x W, EXIF orientation applied), i.e. what ``load_image`` returns, and nothing after it:
augmentation still runs on every read, with whatever seeding the transforms use, so a cached
trial trains on exactly the samples an uncached one would.

Layout: one flat uint8 buffer in shared memory, filled once in the main process before the first
epoch, plus an offset per image. DataLoader workers are started anew every epoch
(``persistent_workers=False``, so the per-epoch reseeding stays simple); one shared buffer reaches
each new worker without a copy, under fork as under spawn or forkserver (where one buffer is one
file descriptor to pass, not one per image). The decoding itself runs in a DataLoader, with the
trial's workers, in manifest order.

Bounded: images are taken in the order given (train first, then val) while their decoded size
(3 x width x height bytes, known from the manifest) fits ``budget_mb``; the rest are decoded on
every read, as without a cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from trainables.data.dataset import load_image
from trainables.data.records import ImageRecord

__all__ = ["CacheFill", "DecodedImageCache"]

_MIB = 2**20


@dataclass(frozen=True)
class CacheFill:
    """What filling the cache did: images held and skipped (over budget), bytes held, seconds spent."""

    images: int
    skipped: int
    bytes: int
    seconds: float


class _Decode(Dataset):
    """The decoding step alone, for the fill loader."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.records[index]).as_subclass(torch.Tensor)


def _nbytes(record: ImageRecord) -> int:
    return 3 * int(record.width) * int(record.height)  # RGB uint8, as load_image returns it


class DecodedImageCache:
    """Decoded uint8 images by image id, in one shared-memory buffer of at most ``budget_mb`` MiB."""

    def __init__(self, budget_mb: float) -> None:
        if budget_mb < 0:
            raise ValueError(f"budget_mb should be >= 0, got {budget_mb}")
        self.budget_bytes = int(budget_mb * _MIB)
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._where: dict[int, tuple[int, int, int]] = {}  # image id -> (offset, height, width)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._where

    @property
    def nbytes(self) -> int:
        return int(self._buffer.numel())

    def fill(self, records: Sequence[ImageRecord], *, workers: int = 0) -> CacheFill:
        """Decode the records that fit the budget (in order) into the buffer; replaces any earlier fill."""
        start = time.perf_counter()
        chosen: list[ImageRecord] = []
        where: dict[int, tuple[int, int, int]] = {}
        total = 0
        for record in records:
            size = _nbytes(record)
            if int(record.image_id) in where or total + size > self.budget_bytes:
                continue
            where[int(record.image_id)] = (total, int(record.height), int(record.width))
            chosen.append(record)
            total += size
        buffer = torch.empty(total, dtype=torch.uint8)
        if chosen:
            # its own generator: the fill must not draw on the trial's global RNG (resume, seeding)
            loader = DataLoader(_Decode(chosen), batch_size=None, shuffle=False, num_workers=workers,
                                generator=torch.Generator().manual_seed(0))
            for record, image in zip(chosen, loader, strict=True):
                offset, h, w = where[int(record.image_id)]
                buffer[offset:offset + 3 * h * w].copy_(image.reshape(-1))
        self._buffer = buffer.share_memory_()
        self._where = where
        return CacheFill(images=len(chosen), skipped=len(records) - len(chosen), bytes=total,
                         seconds=time.perf_counter() - start)

    def get(self, image_id: int) -> tv_tensors.Image | None:
        """The decoded image (a private copy: transforms may write to it), or None when not held."""
        slot = self._where.get(int(image_id))
        if slot is None:
            return None
        offset, h, w = slot
        return tv_tensors.Image(self._buffer[offset:offset + 3 * h * w].view(3, h, w).clone())

    def hit_rate(self, records: Sequence[ImageRecord]) -> float:
        """The share of ``records`` served from memory in one pass over them (an epoch reads each once)."""
        if not records:
            return 0.0
        return sum(int(r.image_id) in self._where for r in records) / len(records)
