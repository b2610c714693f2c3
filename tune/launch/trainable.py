"""The Ray Tune trainables: thin shells around ``trainables.loop.run_trial``.

``sweep_trainable`` runs a search trial; ``confirm_trainable`` a confirmation trial (the same config
with another training seed, ``tune.run.confirmation``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainables.errors import TrainingError
from trainables.loop import TrialResources, run_trial
from trainables.ray_reporter import RayReporter
from tune.launch.costs import cost_figures, write_cost_scalars
from tune.launch.trial_record import DETERMINISTIC_ERRORS, TrialRecord
from tune.run.confirmation import CONFIRM_OF, CONFIRM_SEED
from tune.run.layout import RAY_LOG_FILE
from tune.trial_config import merge_trial_config, trial_threads

__all__ = ["sweep_trainable", "confirm_trainable"]


def sweep_trainable(config: dict[str, Any], *, manifest, base: dict[str, Any], run: str | None = None) -> None:
    """``def train_fn(config)`` for ``tune.with_parameters``: ``manifest`` travels once through the object store.

    With ``run`` (the sweep folder's URI), every start is logged in the trial's folder there, and
    a failure that every retry would repeat is recorded so that a retry re-raises it at once
    (see ``tune.launch.trial_record``).
    """
    gpus = float(base["resources"]["gpu"])
    if gpus > 0 and not torch.cuda.is_available():
        raise TrainingError(f"trial was given {gpus} GPU but torch sees no CUDA device on this node")
    # only the device Ray assigned: CUDA_VISIBLE_DEVICES holds just this trial's GPU, so cuda:0 is it
    # a fractional GPU is a memory share too: two trials at gpu 0.5 must each stay within half the card
    resources = TrialResources(cpus=trial_threads(base["resources"]["cpu"]), device="cuda" if gpus > 0 else "cpu",
                               gpu_memory_fraction=gpus if 0 < gpus < 1 else None,
                               gpu_context_mib=base.get("gpu_context_mib"))
    # every epoch's result names the Ray node that ran it: on a cluster, where a trial ran (and where
    # a retried one continued after losing its node) can be read from the results alone
    node_id = _node_id()
    reporter = RayReporter(extra={"node_id": node_id})
    record = None if run is None else TrialRecord(run, reporter.trial_dir.name)
    if record is not None:
        failure = record.recorded_failure()
        record.start(node_id=node_id, checkpoint=_checkpoint_name(), refused=None if failure is None else type(failure).__name__)
        if failure is not None:
            raise failure  # an earlier attempt failed this way; training again would fail the same way
    with _ray_info_to_file(reporter.trial_dir / RAY_LOG_FILE):
        try:
            trial_config = merge_trial_config(base, config)
            # cost.measure: the model's latency, parameters and size, in every result (tune.launch.costs)
            figures = cost_figures(base.get("costs"), trial_config["model"])
            reporter.add_extra(figures)
            write_cost_scalars(reporter.trial_dir, figures)
            run_trial(trial_config, manifest=manifest, reporter=reporter, resources=resources)
        except DETERMINISTIC_ERRORS as err:
            if record is not None:
                record.record_failure(err)
            raise


def confirm_trainable(config: dict[str, Any], *, manifest, base: dict[str, Any], run: str | None = None,
                      sampled: dict[str, dict[str, Any]]) -> None:
    """A confirmation trial: the sampled config of search trial ``config[CONFIRM_OF]`` (``sampled``:
    search trial id -> its config), trained with the training seed ``config[CONFIRM_SEED]`` in place
    of the sweep's ``training.seed``."""
    seeded = {**base, "training": {**base["training"], "seed": int(config[CONFIRM_SEED])}}
    sweep_trainable(sampled[config[CONFIRM_OF]], manifest=manifest, base=seeded, run=run)


# Ray Train logs "Checkpoint successfully created at: ..." at INFO for every reported epoch from
# the trial's process; with log_to_driver, the worker's stderr reaches the sweep's terminal.
_RAY_TRAIN_LOGGER = "ray.train"


@contextlib.contextmanager
def _ray_info_to_file(path: Path) -> Iterator[None]:
    """For one trial, Ray Train's INFO lines go to ``path`` in the trial folder; warnings still reach stderr."""
    logger = logging.getLogger(_RAY_TRAIN_LOGGER)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_stderr = logging.StreamHandler()
    to_stderr.setLevel(logging.WARNING)
    before = logger.propagate, logger.level
    logger.addHandler(to_file)
    logger.addHandler(to_stderr)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(to_file)
        logger.removeHandler(to_stderr)
        to_file.close()
        logger.propagate, logger.level = before


def _checkpoint_name() -> str | None:
    """The folder name of the checkpoint this start resumes from (``checkpoint_000002``), or None."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    return None if checkpoint is None else Path(checkpoint.path).name


def _node_id() -> str:
    """The hex id of the Ray node this trial runs on (``ray.nodes()[i]["NodeID"]``)."""
    import ray

    return ray.get_runtime_context().get_node_id()
