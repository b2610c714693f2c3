"""A trial's data as its epochs read it: images decoded once, the two splits' datasets and loaders.

``build_trial_data`` decodes the images into the cache (train first, then val, up to
``training.cache_mb``), wraps the train split with the trial's augmentation and the val split
with the evaluation transforms, and builds the val split's COCO ground truth. The training order
and every sample's augmentation depend on the seed and the epoch alone (``TrialData.set_epoch``),
so a resumed trial reads the batches it would have read straight through.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from trainables.architectures import family_of
from trainables.augment import build_eval_transforms, build_train_transforms
from trainables.coco_eval import build_coco_gt
from trainables.config import TrialConfig
from trainables.data import DetectionDataset, ImageRecord, Manifest, collate_detection
from trainables.data.cache import DecodedImageCache

__all__ = ["TrialData", "build_trial_data"]

log = logging.getLogger(__name__)


def _num_workers(setting: int | str, cpus: int | None, device: torch.device) -> int:
    """Loader processes for ``training.num_workers``; "auto" sizes them from the trial's CPU share.

    On CPU the model's own threads need every core (decoding is ~1% of a step there), so none; on
    a GPU, the share less one core for the training loop itself, at most 8 (the cache leaves them
    only the transforms and the images it does not hold).
    """
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    share = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(0, min(int(share) - 1, 8))


def _loader(dataset, *, batch_size: int, shuffle: bool, workers: int, seed: int, device,
            drop_last: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)  # reseeded per epoch: order does not depend on resume
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_detection,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


@dataclass(frozen=True)
class TrialData:
    """The splits as a trial's epochs read them, the val split's COCO ground truth and the image cache."""

    train_records: list[ImageRecord]
    train_set: DetectionDataset
    val_set: DetectionDataset
    train_loader: DataLoader
    val_loader: DataLoader
    coco_gt: COCO
    cache: DecodedImageCache

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Reseed the training order and the augmentation for ``epoch`` (0-based)."""
        self.train_loader.generator.manual_seed(seed * 1_000_003 + epoch)
        self.train_set.set_epoch(epoch)  # workers start per epoch (not persistent) with this copy

    def cache_hit_rate(self) -> float:
        """The share of an epoch's training images not decoded again."""
        return self.cache.hit_rate(self.train_records)


def build_trial_data(cfg: TrialConfig, manifest: Manifest, train_records: list[ImageRecord],
                     val_records: list[ImageRecord], *, cpus: int | None, device: torch.device) -> TrialData:
    """The trial's data, from its config and the manifest's splits; ``cpus`` is the trial's share (None: all)."""
    hp, tr = cfg.hparams, cfg.training
    workers = _num_workers(tr.num_workers, cpus, device)
    # decoded once, here, for every epoch (train first, then val, up to training.cache_mb)
    cache = DecodedImageCache(tr.cache_mb)
    fill = cache.fill(train_records + val_records, workers=workers)
    log.info("image cache: %d images (%.0f MiB) decoded in %.1f s, %d over budget, %d loader workers",
             fill.images, fill.bytes / 2**20, fill.seconds, fill.skipped, workers)
    train_set = DetectionDataset(train_records, transforms=build_train_transforms(hp), cache=cache, seed=tr.seed)
    val_set = DetectionDataset(val_records, transforms=build_eval_transforms(), cache=cache)
    # SSDlite's BatchNorm layers on its 1x1 feature map cannot train on one image: a last batch
    # of one (a different image each epoch, by the shuffle) is left out
    lone_last = family_of(cfg.model.architecture) == "ssd" and len(train_set) % hp.batch_size == 1
    if lone_last:
        log.info("ssd: the last training batch of each epoch would hold 1 image; it is left out")
    train_loader = _loader(train_set, batch_size=hp.batch_size, shuffle=True, workers=workers,
                           seed=tr.seed, device=device, drop_last=lone_last)
    val_loader = _loader(val_set, batch_size=tr.eval_batch_size, shuffle=False, workers=workers,
                         seed=tr.seed, device=device)
    coco_gt = build_coco_gt(val_records, [(c.dataset_id, c.name) for c in manifest.classes])
    return TrialData(train_records, train_set, val_set, train_loader, val_loader, coco_gt, cache)
