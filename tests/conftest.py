"""Shared fixtures: one local Ray for the whole session, tiny generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray reads this once, when any test or fixture first imports it: every local Ray the suite starts
# then listens on 127.0.0.1 only. Scenarios that start `ray start` nodes take it out of their
# environment (joins abort under it); tests/tune/launch/test_exposure.py runs the CLI without it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parents[1]
RACCOON = (REPO / ".." / "shared" / "data" / "raccoon").resolve()

# a tiny model configuration every end-to-end test shares: random-init MobileNetV3 at 96 px
TINY_MODEL = {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None, "min_size": 96, "max_size": 96,
              "box_batch_size_per_image": 64}


def tiny_sweep(name: str, data: Path, storage: Path, **sections) -> dict:
    """A tiny sweep config (as ``sweep.yaml`` holds it): ``TINY_MODEL``, two epochs of the
    ``quick`` space, FIFO, one CPU per trial, no retries; ``sections`` replace whole sections."""
    return {
        "name": name,
        "data": {"path": str(data), "val_fraction": 0.25, "seed": 0},
        "model": TINY_MODEL,
        "training": {"epochs": 2, "seed": 0},
        "search": {"space": "quick", "num_trials": 2, "sampler": "random", "seed": 0},
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1},
        "max_concurrent": 1,
        "storage": str(storage),
        "retries": 0,
        **sections,
    }


def pycocotools_stats(gt_file: Path, res_file: Path) -> list[float]:
    """pycocotools straight from the two files, as its README runs it: the 12 ``COCOeval.stats``."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(res_file)), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 24-image demo dataset at 96 px (COCO JSON, category ids 5, 17, 42)."""
    from trainables.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("tiny_demo"), num_images=24, image_size=96, seed=0)


@pytest.fixture(scope="session")
def tiny_manifest(tiny_demo, tmp_path_factory):
    from trainables.data import build_manifest

    manifest = build_manifest(tiny_demo, val_fraction=0.25, seed=0)
    path = tmp_path_factory.mktemp("manifest") / "manifest.parquet"
    manifest.write(path)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that needs it, on loopback only, stopped at the end."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def calibrate_norms(model, generator, *, size: int = 64) -> None:
    """Set every normalisation layer's statistics to those of its input on random images, as training would.

    A randomly initialised detector's features shrink to ~1e-9 through unit-variance statistics,
    and every box then gets the same score.
    """
    import torch
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    def measure(layer, inputs):
        layer.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        layer.running_var.copy_(inputs[0].var((0, 2, 3)))

    hooks = [m.register_forward_pre_hook(measure) for m in model.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
    with torch.no_grad():
        model.eval().backbone(torch.randn(4, 3, size, size, generator=generator))
    for hook in hooks:
        hook.remove()


@pytest.fixture(scope="session")
def shared_run(tiny_demo, tmp_path_factory):
    """The suite's one production sweep (``boxtune sweep``, ASHA, retries), run once; see tests/shared_run.py."""
    from shared_run import run_shared_sweep

    return run_shared_sweep(tmp_path_factory.mktemp("shared_run"), tiny_demo, TINY_MODEL, REPO)
