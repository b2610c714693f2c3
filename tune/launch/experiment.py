"""What a sweep's two Ray experiments share: the search (the sweep folder) and the confirmation
stage (its ``confirm/`` folder, ``tune.launch.confirm``). Each runs a trainable with the sweep's
resources, keeps checkpoints by ``score``, retries as ``retries`` says, syncs the trials' artifacts
and leaves the printing to boxtune's table; and each resumes with ``Tuner.restore``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainables.data import Manifest
from trainables.gpu_memory import measured_context_mib
from trainables.objective import SCORE
from tune.config import SweepConfig
from tune.run.storage import RunStorage
from tune.trial_config import sweep_base

__all__ = ["trial_runner", "run_config", "restore_tuner"]


def trial_runner(fn: Callable, cfg: SweepConfig, storage: RunStorage, manifest: Manifest, *,
                 costs: dict[str, Any] | None = None, **parameters):
    """``fn`` (``tune.launch.trainable``) with the manifest, the trials' shared config, ``parameters``
    and the sweep's per-trial resources, writing its trial records into the experiment folder ``storage``.

    ``costs`` (the run folder's ``costs.json``, ``cost.measure``) travel in the shared config: each
    trial adds its model's figures to every result it reports."""
    from ray import tune

    # the CUDA context a packed trial's allocator leaves out of its share, read here once: the
    # driver's table (BOXTUNE_GPU_MEMORY_TABLE is an environment variable of this process) is the
    # one the preflight used
    base = {**sweep_base(cfg), "gpu_context_mib": measured_context_mib() if cfg.resources.gpu > 0 else 0.0,
            "costs": costs or {}}
    return tune.with_resources(tune.with_parameters(fn, manifest=manifest, base=base, run=storage.uri, **parameters),
                               {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})


def run_config(cfg: SweepConfig, storage: RunStorage, callbacks: list):
    """The ``RunConfig`` of an experiment written to ``storage``."""
    from ray import tune

    return tune.RunConfig(
        name=storage.name,
        storage_path=storage.parent_uri,
        storage_filesystem=storage.filesystem_for_ray,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE,
                                                checkpoint_score_order="max"),
        failure_config=tune.FailureConfig(max_failures=cfg.retries),
        # Ray's own table shows the first numeric result keys (epoch, losses); boxtune's shows AP,
        # AR100 and the hyperparameters (tune.launch.progress)
        verbose=0,
        callbacks=callbacks,
        # trial TensorBoard events are written in the trial's working dir; copy them on every checkpoint
        sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True, sync_period=10),
    )


def restore_tuner(storage: RunStorage, trainable):
    """The experiment in ``storage`` as it was last saved: finished trials stay finished, unfinished
    ones continue from their checkpoint; the run config, callbacks included, comes from its tuner.pkl."""
    from ray import tune

    return tune.Tuner.restore(storage.uri, trainable=trainable, resume_unfinished=True, resume_errored=False,
                              storage_filesystem=storage.filesystem_for_ray)
