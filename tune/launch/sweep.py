"""Launching a sweep: from its config to trials on Ray (manifest, search space, preflight, Tuner).

Order of work (nothing touches Ray until the config, the data and the search space are known to
be good):

1. validate the config; read and validate the dataset once into ``<run>/manifest.parquet``;
2. compile the search space and run a trial's config checks and builders (optimiser, schedule,
   augmentation) on every corner of it and 64 random draws, with the run's epochs and iterations
   per epoch, so a space that can produce a config the trainable rejects fails now, not in trial 37;
3. start (or join) Ray; check the per-trial resources fit on some node, that a joined cluster's
   nodes all see ``storage`` as the driver does (``tune.launch.storage_check``; in a Ray job,
   ``storage`` was checked before 1 not to lie in the job's temporary working dir), and on a GPU
   that the configs drawn in 2 fit in a trial's share of the smallest card (``tune.launch.gpu_preflight``);
4. run the ``Tuner`` (OptunaSearch define-by-run, its study kept in ``<run>/optuna.journal`` by
   ``tune.launch.searcher``; ASHA, batch halving or FIFO), keeping each trial's best epoch by
   ``score`` (``search.metric`` with the AR100 tiebreak, see ``trainables.objective``) plus its
   latest checkpoint, printing boxtune's live table (``tune.launch.progress``) and keeping
   checkpoints only for the top ``checkpoints.keep_trials`` trials once they end
   (``tune.launch.retention``);
5. with ``search.confirm``, retrain the top configs on new seeds (``tune.launch.confirm``).

What follows the fit (the test split, the HParams experiment, ``ranking.parquet``) is
``tune.results.finish``; ``tune.workflow`` runs the two in turn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

import optuna

from search_spaces import first_trials, resolve_space
from trainables.data import Manifest
from trainables.errors import ConfigError, DataError
from trainables.freeze import max_freeze_depth
from trainables.objective import BEST_SCORE, SCORE, check_measurable, cost_objectives, parse_objective
from tune.config import SweepConfig
from tune.launch.confirm import confirm_stage
from tune.launch.costs import measure_structures, space_structures
from tune.launch.data_source import prepare_manifest
from tune.launch.experiment import restore_tuner, run_config, trial_runner
from tune.launch.gpu_preflight import gpu_memory_preflight
from tune.launch.node_loss import watching
from tune.launch.ray_session import is_local, ray_session, require_resources
from tune.launch.resume_logs import truncate_to_checkpoints
from tune.launch.space_check import check_sampled_space
from tune.launch.storage_check import check_job_storage, check_shared_storage
from tune.launch.trainable import sweep_trainable
from tune.run.folder import RunFolder
from tune.run.front import limits_of
from tune.trial_config import merge_trial_config, sweep_base

__all__ = ["launch_sweep", "continue_sweep", "check_space", "check_objective", "check_models", "make_sampler",
           "grace_period", "make_searcher", "pretrained_start", "describe_scheduler",
           "mixed_starts_note"]

log = logging.getLogger(__name__)


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


def pretrained_start(cfg: SweepConfig) -> bool:
    """Whether every trial starts from a trained detector: ``model.weights`` set, and not unset
    for any architecture in ``model.by_architecture``."""
    model = cfg.model
    return model.weights is not None and all(
        section.get("weights", model.weights) is not None for section in model.by_architecture.values())


def grace_period(cfg: SweepConfig) -> int:
    """ASHA's grace period in epochs: ``scheduler.grace_period``, or by default 2 from a trained
    detector and half the run from random weights; never more than the run.

    From a pretrained start (``bench_transfer.py --part 3``, 12 trials x 6 epochs) AP after epoch
    2 ranks trials nearly as their final AP does (rank correlation 0.86), after epoch 1 it does not
    (0.59): deeply frozen trials start high and stall, and trials that train everything start
    lower and overtake them. With grace 1 ASHA stopped the eventual best trial at its first rung;
    with grace 2 it reached FIFO's best AP in 39% of FIFO's epochs. From random weights every
    trial's AP after one or two epochs is about 0 (``--part 1``), so an early rung would stop
    trials at random.
    """
    epochs = cfg.training.epochs
    chosen = cfg.scheduler.grace_period
    if chosen is None:
        chosen = 2 if pretrained_start(cfg) else max(1, epochs // 2)
    return min(chosen, epochs)


def mixed_starts_note(cfg: SweepConfig, drawn: list[dict[str, Any]]) -> str | None:
    """A note when early stopping will compare trials that start from ``model.weights`` with trials
    that start from random weights (the preflight's ``drawn`` configs say which architectures the
    space gives which start); None when the scheduler is fifo or every start is alike.

    From random weights a detector's AP can stay near 0 for half the run and then rise: on the
    transfer benchmark's target (``bench_transfer.py --part 5 --scheduler halving``) SSDlite from
    random weights had AP 0.0013 by epoch 3 and 0.554 at epoch 6, while Faster R-CNN from the source
    model had 0.016 to 0.36 by epoch 3. The rung at epoch 3 stopped three of the four SSDlite
    trials, one with nearly the winner's config (docs/search-spaces.md).
    """
    if cfg.scheduler.name == "fifo":
        return None
    starts: dict[str, set[bool]] = {}
    for config in drawn:
        model = config["model"]
        starts.setdefault(model["architecture"], set()).add(model.get("weights") is not None)
    pretrained = sorted(a for a, s in starts.items() if True in s)
    random = sorted(a for a, s in starts.items() if False in s)
    if not pretrained or not random:
        return None
    return (f"note: the space starts {', '.join(pretrained)} from model.weights and {', '.join(random)} from "
            f"random weights; {cfg.scheduler.name}'s first rung (epoch {grace_period(cfg)}) ranks them together, "
            f"and trials from random weights may not have taken off by then. scheduler.name: fifo, or one sweep "
            f"per start, judges each trial on its whole run")


def make_searcher(cfg: SweepConfig, folder: RunFolder | None = None):
    """The sweep's OptunaSearch, its study ``cfg.name`` in the run folder's journal
    (``tune.launch.searcher``; the folder is ``cfg``'s unless given): its space and sampler, and the
    built-in space's known-good first trials (``search_spaces.first_trials``) ahead of sampling."""
    from tune.launch.searcher import StudySearch

    folder = folder if folder is not None else RunFolder.create(cfg.storage, cfg.name)
    first = first_trials(cfg.search.space, epochs=cfg.training.epochs) if isinstance(cfg.search.space, str) else []
    # several objectives: the best score maximised and each named cost minimised, in a multi-objective study
    costs = cost_objectives(cfg.search.metric)
    metric, mode = ([BEST_SCORE, *costs], ["max", *("min" for _ in costs)]) if costs else (BEST_SCORE, "max")
    return StudySearch(space=_define_by_run(cfg), metric=metric, mode=mode,
                       sampler=make_sampler(cfg.search.sampler, cfg.search.seed), journal=folder.journal(),
                       study_name=cfg.name, points_to_evaluate=first, limits=limits_of(cfg.search))


def _define_by_run(cfg: SweepConfig):
    """The space, compiled for this sweep's architecture, run length and start."""
    return resolve_space(cfg.search.space, max_freeze_depth=max_freeze_depth(cfg.model.architecture),
                         epochs=cfg.training.epochs, pretrained=pretrained_start(cfg))


def measure_costs(cfg: SweepConfig, num_classes: int, *, echo=print) -> dict[str, dict[str, Any]] | None:
    """``cost.measure``: every model structure the space can produce, measured (``tune.launch.costs``); else None."""
    if not cfg.cost.measure:
        return None
    base = sweep_base(cfg)
    models = space_structures(_define_by_run(cfg), lambda sampled: merge_trial_config(base, sampled))
    echo(f"cost.measure: {len(models)} model structure{'s' if len(models) != 1 else ''} to time, one process each")
    c = cfg.cost
    costs = measure_structures(models, num_classes=num_classes, threads=c.threads, warmup=c.warmup, repeats=c.repeats,
                               onnx=c.onnx, echo=echo)
    for name in cfg.search.costs:  # a named cost nobody measured would leave every trial unranked or infeasible
        missing = [k for k, figures in costs.items() if not math.isfinite(float(figures.get(name) or math.nan))]
        if missing:
            key = cfg.search.key_naming(name)
            hint = " (pip install 'boxtune[onnx]': ONNX Runtime is not installed)" if name == "onnx_latency_ms" else ""
            raise ConfigError(f"{key} names {name}, which could not be measured for {len(missing)} of "
                              f"{len(costs)} model structures{hint}")
    return costs


def check_space(cfg: SweepConfig, *, n_train: int, samples: int = 64, drawn: list | None = None) -> int:
    """Run a trial's config checks and builders on every corner of the space and ``samples`` random draws.

    ``n_train`` (the manifest's train images) fixes the iterations per epoch that one-cycle's
    warm-up depends on, so this runs after the manifest is read. See ``tune.launch.space_check``.
    Returns how many configs were checked; ``drawn``, if given, receives each merged trial config.
    """
    base = sweep_base(cfg)

    def merged(sampled: dict[str, Any]) -> dict[str, Any]:
        config = merge_trial_config(base, sampled)
        if drawn is not None:
            drawn.append(config)
        return config

    return check_sampled_space(_define_by_run(cfg), merged, n_train=n_train, samples=samples, seed=cfg.search.seed)


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


def _callbacks(cfg: SweepConfig, folder: RunFolder) -> list:
    """Ray's JSON/CSV result files, boxtune's live table, the checkpoint budget, and MLflow where configured."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from tune.launch.progress import ProgressTable
    from tune.launch.retention import CheckpointRetention

    # saved with the run config in tuner.pkl: nothing unpicklable in them (the table prints to stdout)
    table = ProgressTable(max_epochs=cfg.training.epochs, by_score=cfg.search.metric != "AP", run=folder.uri,
                          stopper=_STOPPERS.get(cfg.scheduler.name, cfg.scheduler.name), limits=limits_of(cfg.search))
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), table,
                 CheckpointRetention(folder.storage, keep_trials=cfg.checkpoints.keep_trials,
                                     costs=cost_objectives(cfg.search.metric), limits=limits_of(cfg.search))]
    if cfg.tracking.mlflow.uri is not None:  # one parent run for the sweep, a child per trial
        from tune.launch.mlflow_tracking import MlflowTracking

        callbacks.append(MlflowTracking(cfg, folder.storage))
    return callbacks


_STOPPERS = {"asha": "ASHA", "halving": "successive halving"}  # what the live table says stopped a trial


def _scheduling(cfg: SweepConfig, folder: RunFolder):
    """(searcher, scheduler, extra callbacks, max_concurrent_trials) for the Tuner; the searcher's
    study goes in ``folder``'s journal.

    ``halving`` wraps the searcher so that it samples in batches, and limits concurrency itself
    (a trial held at a rung does not count); its state rides on Ray's experiment snapshot through
    a callback (tune.launch.halving). Scheduler, searcher and callback are pickled together in
    tuner.pkl, so a resumed sweep gets them back still joined.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    searcher = make_searcher(cfg, folder)
    if cfg.scheduler.name == "halving":
        from tune.launch.halving import BatchedSearcher, BatchHalving, HalvingState

        scheduler = BatchHalving(metric=SCORE, max_t=cfg.training.epochs, grace_period=grace_period(cfg),
                                 reduction_factor=cfg.scheduler.reduction_factor, batch=cfg.scheduler.batch,
                                 num_samples=cfg.search.num_trials, max_concurrent=cfg.max_concurrent,
                                 stop_on=cfg.scheduler.stop_on)
        batched = BatchedSearcher(searcher, scheduler)
        return batched, scheduler, [HalvingState(scheduler, batched)], None
    if cfg.scheduler.name == "asha":
        from tune.launch.evidence import EvidenceASHA

        asha = EvidenceASHA if cfg.scheduler.stop_on == "interval" else ASHAScheduler
        scheduler = asha(time_attr="training_iteration", metric=SCORE, mode="max", max_t=cfg.training.epochs,
                         grace_period=grace_period(cfg), reduction_factor=cfg.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return searcher, scheduler, [], cfg.max_concurrent


def describe_scheduler(cfg: SweepConfig) -> str:
    """``asha (grace period 2, reduction factor 2)``, as the launch line and the docs name it."""
    name = cfg.scheduler.name
    if name == "fifo":
        return "fifo (no early stopping)"
    described = f"{name} (grace period {grace_period(cfg)}, reduction factor {cfg.scheduler.reduction_factor:g}"
    if name == "halving":
        described += f", batches of {cfg.scheduler.batch}"
    if cfg.scheduler.stop_on == "interval":
        described += ", stop on interval"
    return described + ")"


@contextlib.contextmanager
def _tune_environment(folder: RunFolder | None = None) -> Iterator[None]:
    """Ray Tune settings it reads from the environment inside ``Tuner.fit()``: set for one fit, then
    restored, so they never leak into the caller's process (another sweep, a test, a notebook).
    And the watch for lost nodes (``tune.launch.node_loss``): the live table tells a loss in one
    line, and Ray's output about it goes to ``folder``'s ``ray_output.log``, not the terminal."""
    settings = {
        # Trials write their own TensorBoard events (grouped tags, one HParams session per trial;
        # see trainables.tensorboard). Ray's TensorBoard logger would add a second, conflicting HParams
        # session and ray/tune/* scalars to every trial folder, so only its JSON and CSV loggers run.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        # keeping one best checkpoint per trial makes Tune snapshot its state at every epoch, by design
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S":
            os.environ.get("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
    }
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    # Tune's "operation took 2.2 s, which may be a performance bottleneck" lines: a rung decision
    # or the end-of-trial comparison can take that long on busy cores, and the terminal is the
    # live table's: dropped while the sweep runs.
    slow = logging.getLogger("ray.tune.utils.util")
    slow.addFilter(_drop_slow_operation_lines)
    try:
        with watching(folder):
            yield
    finally:
        slow.removeFilter(_drop_slow_operation_lines)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _drop_slow_operation_lines(record: logging.LogRecord) -> bool:
    return "may be a performance bottleneck" not in record.getMessage()


def _tuner(cfg: SweepConfig, folder: RunFolder, manifest: Manifest, *, restore: bool):
    """The sweep's Tuner (new, or restored from storage); fit it inside ``_tune_environment()``."""
    from ray import tune

    trainable = trial_runner(sweep_trainable, cfg, folder.storage, manifest, costs=folder.costs())
    if restore:
        return restore_tuner(folder.storage, trainable)
    searcher, scheduler, scheduling_callbacks, max_concurrent = _scheduling(cfg, folder)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=cfg.search.num_trials,
                                    max_concurrent_trials=max_concurrent,
                                    # a trial reuses a finished trial's worker process: no new process,
                                    # no second import of torch (run_trial seeds and sets threads itself)
                                    reuse_actors=True),
        run_config=run_config(cfg, folder.storage, [*_callbacks(cfg, folder), *scheduling_callbacks]),
    )


def launch_sweep(cfg: SweepConfig, *, address: str | None = None, echo=print) -> tuple[RunFolder, Manifest]:
    """Check everything, write the run folder's config and manifest, and run the sweep's trials on Ray."""
    check_job_storage(cfg.storage)  # in a Ray job: not in Ray's temporary copy of its working dir
    folder = RunFolder.create(cfg.storage, cfg.name)
    if folder.is_sweep():
        raise ConfigError(f"name: a sweep {cfg.name!r} already exists in {folder.uri}; "
                          f"run `boxtune resume {folder.uri}` or choose another name")
    echo(f"reading dataset {cfg.data.path}")
    manifest = prepare_manifest(cfg)
    splits = manifest.table.column("split").to_pylist()
    n_train, n_val = splits.count("train"), splits.count("val")
    if not n_val:
        raise DataError(f"{cfg.data.path}: the validation split is empty; set data.val_fraction > 0 or data.val_path")
    drawn: list[dict[str, Any]] = []
    check_space(cfg, n_train=n_train, drawn=drawn)  # before Ray: a space that can produce a rejected config fails now
    check_objective(cfg, manifest)
    check_models(drawn, manifest.class_names, local=_trials_run_here(address))
    n_test = splits.count("test")  # held out: evaluated once when the sweep ends (tune.results.holdout)
    echo(f"  {n_train} train / {n_val} val{f' / {n_test} test' if n_test else ''} images, "
         f"classes: {', '.join(manifest.class_names)}")
    if (note := mixed_starts_note(cfg, drawn)) is not None:
        echo(note)
    costs = measure_costs(cfg, len(manifest.class_names), echo=echo)  # before Ray: no trial competes with it
    with ray_session(address) as ray_info:
        require_resources(cpu=cfg.resources.cpu, gpu=cfg.resources.gpu)
        if ray_info != "local":  # joined: every node that can run a trial sees storage as this one does
            check_shared_storage(cfg.storage, cpu=cfg.resources.cpu, gpu=cfg.resources.gpu)
        # each config against a trial's share of a card, with the training images' distinct sizes
        # (each of ~200 configs goes through them all)
        gpu_memory_preflight(drawn, gpu=cfg.resources.gpu, echo=echo,
                             sizes=sorted({(r.height, r.width) for r in manifest.records("train")}))
        folder.write_config(cfg)
        folder.write_manifest(manifest)
        folder.write_info({**_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ray_address": ray_info})
        if costs is not None:
            folder.write_costs(costs)
        trials = cfg.search.num_trials
        echo(f"sweep {cfg.name}: {trials} trial{'s' if trials != 1 else ''}, {cfg.search.sampler} sampler, "
             f"{describe_scheduler(cfg)} scheduler, results in {folder.uri}")
        # a new study: a URI run's local journal left by an earlier sweep of the same URI goes
        folder.journal().discard_local_copy()
        with _tune_environment(folder):
            _tuner(cfg, folder, manifest, restore=False).fit()
            folder.journal().upload()  # a URI run: the study as the trials ended (tune.run.study)
            confirm_stage(cfg, folder, manifest, echo=echo)  # search.confirm: nothing when off
    return folder, manifest


def continue_sweep(run: str, *, address: str | None = None, echo=print) -> tuple[RunFolder, Manifest]:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from their checkpoint."""
    folder = RunFolder.at(run)
    folder.require_sweep(run)
    check_job_storage(folder.storage.parent_uri)
    cfg = folder.config()
    manifest = folder.manifest()
    with ray_session(address) as ray_info:
        require_resources(cpu=cfg.resources.cpu, gpu=cfg.resources.gpu)
        if ray_info != "local":
            check_shared_storage(folder.storage.parent_uri, cpu=cfg.resources.cpu, gpu=cfg.resources.gpu)
        # result files may run ahead of Ray's last snapshot: no epoch is recorded twice (tune.launch.resume_logs)
        truncate_to_checkpoints(folder)
        echo(f"resuming sweep {cfg.name} in {folder.uri}")
        folder.journal().download()  # a URI run: the study's journal as the run folder has it (tune.run.study)
        with _tune_environment(folder):
            _tuner(cfg, folder, manifest, restore=True).fit()
            folder.journal().upload()
            # started, it resumes without retraining finished seeds; else it starts now
            confirm_stage(cfg, folder, manifest, echo=echo)
    return folder, manifest


def check_models(configs: list[dict[str, Any]], class_names: list[str], *, local: bool) -> None:
    """Each distinct model section among ``configs`` (the space check's draws, one per architecture
    the space can pick) through ``trainables.model.check_model``, before Ray starts: a class_map
    typo, an unknown weights name or a missing weights file fails here with one line, not in every
    trial. A local sweep also downloads named weights here, once, for its trials to find cached; on
    a cluster the files are the workers' to have, so only names are checked."""
    from trainables.config import ModelConfig
    from trainables.model import cache_weights, check_model

    for section in {json.dumps(c["model"], sort_keys=True): c["model"] for c in configs}.values():
        model_cfg = ModelConfig.model_validate(section)
        check_model(model_cfg, class_names, files=local)
        if local:
            cache_weights(model_cfg)


def _trials_run_here(address: str | None) -> bool:
    """Whether every trial runs on this machine, so a weights path here is the one they read: a
    local Ray, or an already started Ray whose every node is this one; not a join (``--address``,
    ``RAY_ADDRESS``)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        import ray

        here = ray.util.get_node_ip_address()
        return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node["Alive"])
    return is_local(address)


def check_objective(cfg: SweepConfig, manifest: Manifest) -> None:
    """``search.metric`` names the manifest's classes and can be measured on its val split (ConfigError if not)."""
    check_measurable(parse_objective(cfg.search.metric), manifest.records("val"), manifest.classes)
