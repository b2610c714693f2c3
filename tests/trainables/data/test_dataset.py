"""The torch dataset's augmentation draws: seeded per sample and epoch, the same whatever the loader's workers."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from trainables.augment import build_train_transforms
from trainables.config import HParams
from trainables.data import DetectionDataset, collate_detection, read_manifest

# every augmentation on at once, each half of the time
AUGMENT = HParams(hflip_p=0.5, vflip_p=0.5, jitter_p=0.5, crop_p=0.5, zoom_out_p=0.5, scale_jitter_p=0.5)


def _epochs(dataset, *, workers: int, epoch: int):
    dataset.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=3, shuffle=True, num_workers=workers, collate_fn=collate_detection,
                        generator=torch.Generator().manual_seed(epoch))
    return [(img, t["boxes"].as_subclass(torch.Tensor), t["labels"]) for images, targets in loader
            for img, t in zip(images, targets, strict=True)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=True))


def test_augmentation_does_not_depend_on_loader_workers(tiny_manifest):
    records = read_manifest(tiny_manifest).records("train")
    dataset = DetectionDataset(records, transforms=build_train_transforms(AUGMENT), seed=7)
    alone = _epochs(dataset, workers=0, epoch=1)
    assert _same(alone, _epochs(dataset, workers=2, epoch=1))  # two worker processes: the same samples
    assert _same(alone, _epochs(dataset, workers=0, epoch=1))  # and again
    assert not _same(alone, _epochs(dataset, workers=0, epoch=2))  # another epoch, other draws
    other_seed = DetectionDataset(records, transforms=build_train_transforms(AUGMENT), seed=8)
    assert not _same(alone, _epochs(other_seed, workers=0, epoch=1))
    state = torch.get_rng_state()
    dataset[0]
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left as it was
