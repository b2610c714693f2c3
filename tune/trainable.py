"""The Ray Tune trainable: a thin shell around ``trainables.loop.run_trial``."""

from __future__ import annotations

from typing import Any

import torch

from trainables.errors import TrainingError
from trainables.loop import TrialResources, run_trial
from trainables.ray_reporter import RayReporter

__all__ = ["sweep_trainable", "merge_trial_config"]


def merge_trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's full config: the sweep's fixed model/training sections, its hparam constants, then the sample."""
    return {
        "model": base["model"],
        "training": base["training"],
        "hparams": {**base.get("hparams", {}), **sampled},
    }


def sweep_trainable(config: dict[str, Any], *, manifest, base: dict[str, Any]) -> None:
    """``def train_fn(config)`` for ``tune.with_parameters``: ``manifest`` travels once through the object store."""
    gpus = float(base["resources"]["gpu"])
    if gpus > 0 and not torch.cuda.is_available():
        raise TrainingError(f"trial was given {gpus} GPU but torch sees no CUDA device on this node")
    # only the device Ray assigned: CUDA_VISIBLE_DEVICES holds just this trial's GPU, so cuda:0 is it
    resources = TrialResources(cpus=max(1, int(round(base["resources"]["cpu"]))), device="cuda" if gpus > 0 else "cpu")
    run_trial(merge_trial_config(base, config), manifest=manifest, reporter=RayReporter(), resources=resources)
