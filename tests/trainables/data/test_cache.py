"""The decoded-image cache: exact images, bounded, really read instead of the files, same training results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from torch.utils.data import DataLoader

from trainables.augment import build_train_transforms
from trainables.config import HParams, parse_trial_config
from trainables.data import DetectionDataset, build_manifest, collate_detection, load_image
from trainables.data.cache import DecodedImageCache
from trainables.errors import ConfigError, DataError
from trainables.loaders import _num_workers
from trainables.loop import TrialResources, run_trial
from trainables.reporting import LocalReporter

_PX = 3 * 96 * 96  # bytes of one decoded 96 px demo image
_NOT_RESULTS = {"images_per_s", "train_s", "eval_s", "cache_hit_rate"}


@pytest.fixture()
def own_demo(tiny_demo, tmp_path):
    """A copy of the tiny demo whose image files a test may delete."""
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo.parent if tiny_demo.is_file() else tiny_demo, root)
    return build_manifest(root, val_fraction=0.25, seed=0), root


def test_fill_holds_exact_images_within_budget(own_demo):
    manifest, _ = own_demo
    records = manifest.records("train")
    cache = DecodedImageCache(budget_mb=3.5 * _PX / 2**20)  # room for three images, not four
    fill = cache.fill(records, workers=0)
    assert (fill.images, fill.skipped, fill.bytes) == (3, len(records) - 3, 3 * _PX)
    assert cache.nbytes == 3 * _PX and len(cache) == 3
    assert cache._buffer.is_shared()  # one buffer every epoch's fresh workers map, not copy
    for r in records[:3]:
        held = cache.get(r.image_id)
        assert held.dtype == torch.uint8 and torch.equal(held, load_image(r))
    assert cache.get(records[3].image_id) is None
    assert cache.hit_rate(records) == pytest.approx(3 / len(records))
    # a private copy: writing to it leaves the cache as it was
    cache.get(records[0].image_id).zero_()
    assert torch.equal(cache.get(records[0].image_id), load_image(records[0]))


def test_workers_fill_the_same_bytes(own_demo):
    manifest, _ = own_demo
    records = manifest.records("train") + manifest.records("val")
    a, b = DecodedImageCache(64), DecodedImageCache(64)
    assert a.fill(records, workers=0).images == b.fill(records, workers=2).images == len(records)
    assert torch.equal(a._buffer, b._buffer)


def test_cached_images_are_not_read_again(own_demo):
    """With the files gone, cached images still load (in loader workers too); an uncached one fails."""
    manifest, root = own_demo
    records = manifest.records("train")
    transforms = build_train_transforms(HParams(hflip_p=0.5, jitter_p=0.5))
    before = DetectionDataset(records, transforms=transforms, seed=3)
    expected = [before[i] for i in range(len(records))]
    cache = DecodedImageCache(budget_mb=(len(records) - 1) * _PX / 2**20)  # all but the last
    assert cache.fill(records, workers=0).skipped == 1
    for image in (root / "images").glob("*"):
        image.unlink()
    cached = DetectionDataset(records[:-1], transforms=transforms, cache=cache, seed=3)
    loader = DataLoader(cached, batch_size=4, num_workers=2, collate_fn=collate_detection)
    got = [(img, t) for imgs, targets in loader for img, t in zip(imgs, targets, strict=True)]
    assert len(got) == len(records) - 1
    for (img, t), (want_img, want_t) in zip(got, expected, strict=False):
        assert torch.equal(img, want_img) and torch.equal(t["boxes"], want_t["boxes"])
    with pytest.raises((DataError, OSError), match=Path(records[-1].path).name):
        DetectionDataset(records[-1:], cache=cache)[0]


@pytest.mark.parametrize(("setting", "cpus", "device", "workers"), [
    (3, 8, "cuda", 3), (0, 8, "cuda", 0),  # a number is taken as it is
    ("auto", 4, "cuda", 3), ("auto", 1, "cuda", 0), ("auto", 32, "cuda", 8),  # share less one, at most 8
    ("auto", 8, "cpu", 0),  # on CPU the model's threads need the cores
])
def test_num_workers_auto_follows_the_cpu_share(setting, cpus, device, workers):
    assert _num_workers(setting, cpus, torch.device(device)) == workers


@pytest.mark.parametrize("bad", ["lots", -1, 65, 2.5])
def test_num_workers_rejects_other_values(bad):
    with pytest.raises(ConfigError, match="training.num_workers: expected a number of processes in"):
        parse_trial_config({"training": {"num_workers": bad}})


def test_cache_and_workers_leave_results_unchanged(tmp_path, tiny_manifest):
    """Cached with no workers against uncached with two workers: the same losses and AP."""
    hp = {"batch_size": 4, "lr": 0.01, "hflip_p": 0.5, "jitter_p": 0.5}
    runs = {}
    for name, training in {"cached": {"cache_mb": 64, "num_workers": 0},
                           "uncached": {"cache_mb": 0, "num_workers": 2}}.items():
        reporter = LocalReporter(tmp_path / name)
        run_trial({"model": TINY_MODEL, "training": {"epochs": 1, "seed": 1, **training}, "hparams": hp},
                  manifest=tiny_manifest, reporter=reporter, resources=TrialResources(cpus=1, device="cpu"))
        runs[name] = reporter.history()
    assert [m["cache_hit_rate"] for m in runs["cached"]] == [1.0]
    assert [m["cache_hit_rate"] for m in runs["uncached"]] == [0.0]
    def results(m):  # every metric but the timings and the cache's own; NaN (no large objects) equals NaN
        return json.dumps({k: v for k, v in m.items() if k not in _NOT_RESULTS}, sort_keys=True)

    assert [results(m) for m in runs["cached"]] == [results(m) for m in runs["uncached"]]
    assert "AP" in runs["cached"][0] and runs["cached"][0]["loss_classifier"] > 0
