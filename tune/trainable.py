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
    # every epoch's result names the Ray node that ran it: on a cluster, where a trial ran (and where
    # a retried one continued after losing its node) can be read from the results alone
    reporter = RayReporter(extra={"node_id": _node_id()})
    run_trial(merge_trial_config(base, config), manifest=manifest, reporter=reporter, resources=resources)


def _node_id() -> str:
    """The hex id of the Ray node this trial runs on (``ray.nodes()[i]["NodeID"]``)."""
    import ray

    return ray.get_runtime_context().get_node_id()
