"""A sweep from its config to ranked trials: manifest, search space, preflight, Tuner, ranking.

Order of work (nothing touches Ray until the config, the data and the search space are known to
be good):

1. validate the config; read and validate the dataset once into ``<run>/manifest.parquet``;
2. compile the search space and sample it a few dozen times against the trial schema, so a space
   that can produce a config the trainable rejects fails now, not in trial 37;
3. start (or join) Ray; check the per-trial resources fit on some node;
4. run the ``Tuner`` (OptunaSearch define-by-run + ASHA or FIFO), keeping each trial's best
   epoch by AP plus its latest checkpoint;
5. write ``<run>/ranking.parquet`` and return the ranking.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from typing import Any

import optuna
import yaml

from search_spaces import resolve_space, suggest_hparams
from trainables.config import TrialConfig, format_validation_error
from trainables.data import Manifest, build_manifest, read_manifest
from trainables.errors import ConfigError, DataError
from trainables.freeze import max_freeze_depth, validate_freeze_depth
from tune.config import SweepConfig
from tune.ray_session import ray_session, require_resources
from tune.storage import RunStorage
from tune.tensorboard import write_hparams_experiment
from tune.trainable import merge_trial_config, sweep_trainable

__all__ = ["run_sweep", "resume_sweep", "prepare_manifest", "check_space", "make_sampler", "SWEEP_FILE", "MANIFEST_FILE"]

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.yaml"
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "boxtune.json"
METRIC = "AP"  # ASHA compares the current epoch's AP at each rung
SEARCH_METRIC = "best_AP"  # the searcher learns from a trial's best epoch, as the ranking does


def prepare_manifest(cfg: SweepConfig) -> Manifest:
    """Read and validate the dataset once (or load a prebuilt manifest)."""
    d = cfg.data
    if d.path.endswith(".parquet"):
        return read_manifest(d.path)
    return build_manifest(d.path, format=d.format, images_dir=d.images_dir, val_source=d.val_path,
                          val_fraction=d.val_fraction, seed=d.seed, classes=d.classes, rename=d.rename or None)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by config name, seeded; a missing optional dependency is a ConfigError."""
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            import cmaes  # noqa: F401 - CmaEsSampler needs it at sampling time; fail now instead

            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if name == "gp":
            import scipy  # noqa: F401

            return optuna.samplers.GPSampler(seed=seed)
        if name == "qmc":
            import scipy  # noqa: F401

            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    except ImportError as err:
        raise ConfigError(f"search.sampler: {name!r} needs the {err.name!r} package; pip install {err.name}") from None
    raise ConfigError(f"search.sampler: unknown sampler {name!r}")


def _define_by_run(cfg: SweepConfig):
    """The space, compiled for this sweep's architecture."""
    return resolve_space(cfg.search.space, max_freeze_depth=max_freeze_depth(cfg.model.architecture),
                         epochs=cfg.training.epochs)


def check_space(cfg: SweepConfig, *, samples: int = 64) -> None:
    """Sample the space ``samples`` times; every merged config must pass the trial schema."""
    space = _define_by_run(cfg)
    base = _base(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.search.seed))
    for _ in range(samples):
        trial = study.ask()
        sampled = suggest_hparams(space, trial)
        merged = merge_trial_config(base, sampled)
        try:
            trial_cfg = TrialConfig.model_validate(merged)
            validate_freeze_depth(cfg.model.architecture, trial_cfg.hparams.freeze_depth)
        except ConfigError as err:
            raise ConfigError(f"search.space: sampled {sampled} which the trainable rejects: {err}") from None
        except Exception as err:  # pydantic ValidationError
            lines = format_validation_error(err, TrialConfig) if hasattr(err, "errors") else [str(err)]
            raise ConfigError(f"search.space: sampled {sampled} which the trainable rejects: " + "; ".join(lines)) from None
        study.tell(trial, 0.0)


def _base(cfg: SweepConfig) -> dict[str, Any]:
    return {
        "model": cfg.model.model_dump(mode="json"),
        "training": cfg.training.model_dump(mode="json"),
        "hparams": dict(cfg.hparams),
        "resources": cfg.resources.model_dump(mode="json"),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import ray
    import torch
    import torchvision

    try:
        boxtune = version("boxtune")
    except PackageNotFoundError:
        boxtune = "unknown"
    return {"boxtune": boxtune, "ray": ray.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "optuna": optuna.__version__, "python": platform.python_version()}


def _tuner(cfg: SweepConfig, storage: RunStorage, manifest: Manifest, *, restore: bool):
    # keeping one best checkpoint per trial makes Tune snapshot its state at every epoch, by design
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Trials write their own TensorBoard events (grouped tags, one HParams session per trial;
    # see trainables.tensorboard). Ray's TensorBoard logger would add a second, conflicting HParams
    # session and ray/tune/* scalars to every trial folder, so only its JSON and CSV loggers run.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    base = _base(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trainable, manifest=manifest, base=base),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    if restore:
        return tune.Tuner.restore(storage.uri, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  storage_filesystem=storage.filesystem_for_ray)
    searcher = OptunaSearch(space=_define_by_run(cfg), metric=SEARCH_METRIC, mode="max",
                            sampler=make_sampler(cfg.search.sampler, cfg.search.seed))
    if cfg.scheduler.name == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode="max",
                                  max_t=cfg.training.epochs, grace_period=min(cfg.scheduler.grace_period, cfg.training.epochs),
                                  reduction_factor=cfg.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=cfg.search.num_trials,
                                    max_concurrent_trials=cfg.max_concurrent,
                                    # a trial reuses a finished trial's worker process: no new process,
                                    # no second import of torch (run_trial seeds and sets threads itself)
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage.parent_uri,
            storage_filesystem=storage.filesystem_for_ray,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=cfg.retries),
            verbose=1,  # a status table now and then, not every result
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
            # trial TensorBoard events are written in the trial's working dir; copy them on every checkpoint
            sync_config=tune.SyncConfig(sync_artifacts=True, sync_artifacts_on_checkpoint=True, sync_period=10),
        ),
    )


def run_sweep(cfg: SweepConfig, *, address: str | None = None, echo=print) -> list[dict[str, Any]]:
    """Run a whole sweep; return the ranking rows (best first)."""
    from tune.report import write_ranking

    storage = RunStorage(cfg.storage, cfg.name)
    if storage.exists(SWEEP_FILE):
        raise ConfigError(f"name: a sweep {cfg.name!r} already exists in {storage.uri}; "
                          f"run `boxtune resume {storage.uri}` or choose another name")
    check_space(cfg)
    echo(f"reading dataset {cfg.data.path}")
    manifest = prepare_manifest(cfg)
    splits = manifest.table.column("split").to_pylist()
    n_train, n_val = splits.count("train"), splits.count("val")
    if not n_val:
        raise DataError(f"{cfg.data.path}: the validation split is empty; set data.val_fraction > 0 or data.val_path")
    echo(f"  {n_train} train / {n_val} val images, "
         f"classes: {', '.join(manifest.class_names)}")
    with ray_session(address) as ray_info:
        require_resources(cpu=cfg.resources.cpu, gpu=cfg.resources.gpu)
        storage.write_text(SWEEP_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        storage.write_manifest(MANIFEST_FILE, manifest)
        storage.write_text(INFO_FILE, json.dumps({**_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "ray_address": ray_info}, indent=2))
        echo(f"sweep {cfg.name}: {cfg.search.num_trials} trials, {cfg.search.sampler} sampler, "
             f"{cfg.scheduler.name} scheduler, results in {storage.uri}")
        _tuner(cfg, storage, manifest, restore=False).fit()
    write_hparams_experiment(storage.uri)
    return write_ranking(storage.uri)


def resume_sweep(run: str, *, address: str | None = None, echo=print) -> list[dict[str, Any]]:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from their checkpoint."""
    from tune.report import write_ranking

    storage = RunStorage.from_uri(run)
    if not storage.exists(SWEEP_FILE):
        raise ConfigError(f"{run}: not a boxtune sweep folder (no {SWEEP_FILE})")
    cfg = SweepConfig.model_validate(yaml.safe_load(storage.read_text(SWEEP_FILE)))
    manifest = storage.read_manifest(MANIFEST_FILE)
    with ray_session(address):
        require_resources(cpu=cfg.resources.cpu, gpu=cfg.resources.gpu)
        echo(f"resuming sweep {cfg.name} in {storage.uri}")
        _tuner(cfg, storage, manifest, restore=True).fit()
    write_hparams_experiment(storage.uri)
    return write_ranking(storage.uri)
