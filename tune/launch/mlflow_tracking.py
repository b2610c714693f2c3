"""A sweep in MLflow (``tracking: {mlflow: {uri: ..., experiment: ...}}``): one parent run for the
sweep, one child run per trial.

* The parent holds the sweep's config (every key as a param, ``sweep.yaml`` as an artifact) and,
  when the sweep ends, the ranking (``ranking.json``; the leader's numbers as metrics, its id as a tag).
* A child holds its trial's sampled hyperparameters (params), every epoch's numbers (metrics at
  step = epoch), and tags for the sweep, the trial, its status and, when the sweep ends, its rank,
  its best epoch's 95% interval and whether it is within noise of the leader (where the ranking
  has intervals).

MLflow refuses metric names such as ``AP[cat]``: names are mapped (``mlflow_key``: ``AP_cat``).
Each epoch is one ``log_batch`` call. The run ids are kept with the callback's state, which Ray
saves with the experiment and hands back on ``boxtune resume``; runs made after the last save are
found again by their tags. A resumed sweep so logs into the runs it started, never into new ones.

MLflow never stops a sweep: requests time out after ``REQUEST_TIMEOUT_S`` and are not retried (the
MLflow client otherwise retries for minutes), and the first failure prints one line and turns
tracking off for the rest of the fit. The run folder stays the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import yaml
from ray import tune

from tune.config import SweepConfig
from tune.run.storage import RunStorage

__all__ = ["MlflowTracking", "mlflow_key", "REQUEST_TIMEOUT_S", "SWEEP_TAG", "RUN_TAG", "TRIAL_TAG", "KIND_TAG",
           "STATUS_TAG", "RANK_TAG", "NOISE_TAG", "BEST_TAG"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5  # per request to the tracking server, s (MLflow's own default is 120)
SWEEP_TAG, RUN_TAG, TRIAL_TAG = "boxtune.sweep", "boxtune.run", "boxtune.trial"
KIND_TAG, STATUS_TAG = "boxtune.kind", "boxtune.status"  # kind: sweep (the parent) or trial
RANK_TAG, NOISE_TAG, BEST_TAG = "boxtune.rank", "boxtune.within_noise", "boxtune.best_trial"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a child under its parent
# per log_batch call: the server takes 1000 metrics, 100 params and 100 tags, and 1000 items in all
_METRICS, _OTHERS = 800, 100
_PARAM_CHARS = 6000  # longest param value the server takes
# Ray's bookkeeping in every result, not a trial's numbers
_RAY_KEYS = {"timestamp", "done", "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore",
             "iterations_since_restore", "pid", "epoch"}
_FINAL = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}  # Ray's status -> MLflow's


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts: ``AP[cat]`` -> ``AP_cat`` (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w\-. /]", "_", str(name)).strip("_") or "_"


def _short(err: BaseException) -> str:
    """The reason in a few words: ``[Errno 111] Connection refused`` rather than a page of urllib3."""
    text = str(err)
    found = re.search(r"\[Errno -?\d+\][^'\")]*|Read timed out|timed out", text)
    reason = found.group(0) if found else (text.splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {reason}".rstrip(": ")


def _flat(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys -> strings (a list or an empty mapping as JSON)."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    value = data if isinstance(data, str) else json.dumps(data, default=str)
    return {prefix.rstrip("."): value[:_PARAM_CHARS]}


@contextlib.contextmanager
def _short_requests() -> Iterator[None]:
    """MLflow's HTTP settings for one call: no retries, short timeouts (a user's own settings win)."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S)}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update({k: v for k, v in settings.items() if before[k] is None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)


class MlflowTracking(tune.Callback):
    """Logs a sweep to MLflow from the driver (see the module docstring)."""

    def __init__(self, cfg: SweepConfig, storage: RunStorage):
        self.uri = cfg.tracking.mlflow.uri
        self.experiment = cfg.tracking.mlflow.experiment
        self.name = cfg.name
        self.storage = storage  # pickled in the run's tuner.pkl: the folder is rebuilt from it
        self.config = cfg.model_dump(mode="json")
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self._client = None
        self._experiment_id: str | None = None
        self._down = False

    # -- what Ray pickles and checkpoints ------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_experiment_id": None, "_down": False}

    def get_state(self) -> dict[str, Any]:
        return {"parent_id": self.parent_id, "runs": dict(self.runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.parent_id = state.get("parent_id") or self.parent_id
        self.runs = {**self.runs, **state.get("runs", {})}

    # -- calls to the server -----------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` against the server; on any failure one line, and tracking off."""
        if self._down:
            return None
        try:
            with _short_requests():
                return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a tracker must never end the sweep
            self._off(f"{self.uri} did not take {what} ({_short(err)})")
            return None

    def _off(self, why: str) -> None:
        self._down = True
        log.warning("MLflow tracking off for the rest of this sweep: %s; the sweep goes on, and its run folder "
                    "keeps every result", why)

    def _artifact(self, run_id: str, text: str, name: str) -> None:
        """A text artifact; one that cannot be stored (an artifact store the driver cannot reach) is said, not fatal."""
        if self._down:
            return
        try:
            with _short_requests():
                self._client.log_text(run_id, text, name)
        except Exception as err:  # noqa: BLE001 - the runs go on without the file
            log.warning("MLflow: %s not stored with run %s (%s)", name, run_id, _short(err))

    def _batch(self, run_id: str, *, metrics=(), params=(), tags=()) -> None:
        """``log_batch`` calls of at most ``_METRICS`` metrics and ``_OTHERS`` params and tags each."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), now, int(step)) for k, v, step in metrics]
        params = [Param(mlflow_key(k), str(v)[:_PARAM_CHARS]) for k, v in params]
        tags = [RunTag(k, str(v)) for k, v in tags]
        calls = max(-(-len(metrics) // _METRICS), -(-len(params) // _OTHERS), -(-len(tags) // _OTHERS), 1)
        for i in range(calls):
            self._call("a batch", self._client.log_batch, run_id, metrics=metrics[i * _METRICS:(i + 1) * _METRICS],
                       params=params[i * _OTHERS:(i + 1) * _OTHERS], tags=tags[i * _OTHERS:(i + 1) * _OTHERS])

    def _find(self, **tags: str) -> str | None:
        """The run of this experiment with these tags (a run made before a resume), or None."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self._call("a search", self._client.search_runs, [self._experiment_id], filter_string=where,
                           max_results=1)
        return found[0].info.run_id if found else None

    # -- Tune's hooks ------------------------------------------------------------------------------
    def setup(self, **info) -> None:
        """Connect, and open the sweep's parent run (the one it had, on resume)."""
        self._down = False
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:  # a sweep resumed where MLflow is not installed
            self._off("the mlflow package is not installed here (pip install 'boxtune[mlflow]')")
            return
        self._client = MlflowClient(tracking_uri=self.uri)
        experiment = self._call(f"experiment {self.experiment!r}", self._client.get_experiment_by_name, self.experiment)
        if experiment is None and not self._down:
            self._experiment_id = self._call(f"experiment {self.experiment!r}", self._client.create_experiment,
                                             self.experiment)
        elif experiment is not None:
            self._experiment_id = experiment.experiment_id
        if self._down:
            return
        self.parent_id = self.parent_id or self._find(**{RUN_TAG: self.storage.uri, KIND_TAG: "sweep"})
        if self.parent_id is not None:
            self._call("the sweep's run", self._client.update_run, self.parent_id, status="RUNNING")
            return
        run = self._call("the sweep's run", self._client.create_run, self._experiment_id, run_name=self.name,
                         tags={SWEEP_TAG: self.name, RUN_TAG: self.storage.uri, KIND_TAG: "sweep", STATUS_TAG: "RUNNING"})
        if run is None:
            return
        self.parent_id = run.info.run_id
        self._batch(self.parent_id, params=sorted(_flat(self.config).items()))
        self._artifact(self.parent_id, yaml.safe_dump(self.config, sort_keys=False), "sweep.yaml")

    def _child(self, trial) -> str | None:
        """The trial's run: made on its first start, found again after a resume."""
        if self._down or self.parent_id is None:
            return None
        run_id = self.runs.get(trial.trial_id) or self._find(**{RUN_TAG: self.storage.uri, TRIAL_TAG: trial.trial_id})
        if run_id is None:
            run = self._call(f"trial {trial.trial_id}'s run", self._client.create_run, self._experiment_id,
                             run_name=str(trial.experiment_tag or trial.trial_id),
                             tags={PARENT_TAG: self.parent_id, SWEEP_TAG: self.name, RUN_TAG: self.storage.uri,
                                   KIND_TAG: "trial", TRIAL_TAG: trial.trial_id, STATUS_TAG: "RUNNING"})
            if run is None:
                return None
            run_id = run.info.run_id
            self._batch(run_id, params=sorted((k, v) for k, v in trial.config.items()))
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._child(trial)
        if run_id is not None:
            self._call(f"trial {trial.trial_id}'s run", self._client.update_run, run_id, status="RUNNING")
            self._batch(run_id, tags=[(STATUS_TAG, "RUNNING")])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._child(trial)
        if run_id is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = [(k, v, step) for k, v in result.items()
                   if k not in _RAY_KEYS and isinstance(v, int | float) and not isinstance(v, bool)]
        self._batch(run_id, metrics=metrics)

    def _end_trial(self, trial, status: str) -> None:
        run_id = self._child(trial)
        if run_id is not None:
            self._batch(run_id, tags=[(STATUS_TAG, status)])
            self._call(f"trial {trial.trial_id}'s run", self._client.set_terminated, run_id, status=_FINAL[status])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end_trial(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end_trial(trial, "ERROR")

    def on_experiment_end(self, trials, **info) -> None:
        """The ranking: each trial's rank and interval on its run, the whole ranking on the parent's.
        A sweep stopped before its end (Ctrl-C) leaves its unfinished runs and the parent KILLED."""
        if self._down or self.parent_id is None:
            return
        from tune.run import load_sweep, rank_trials
        from tune.run.front import eligible

        for trial in trials:
            if str(trial.status) not in _FINAL and trial.trial_id in self.runs:
                self._batch(self.runs[trial.trial_id], tags=[(STATUS_TAG, str(trial.status))])
                self._call(f"trial {trial.trial_id}'s run", self._client.set_terminated, self.runs[trial.trial_id],
                           status="KILLED")
        if any(str(t.status) not in _FINAL for t in trials):
            self._batch(self.parent_id, tags=[(STATUS_TAG, "INTERRUPTED")])
            self._call("the sweep's run", self._client.set_terminated, self.parent_id, status="KILLED")
            return
        try:
            rows = rank_trials(load_sweep(self.storage.uri))
        except Exception as err:  # noqa: BLE001 - the sweep's end writes ranking.parquet regardless
            log.warning("MLflow: the ranking was not logged (%s)", _short(err))
            rows = []
        for row in rows:
            run_id = self.runs.get(row["trial"])
            if run_id is None:
                continue
            tags = [(RANK_TAG, row["rank"]), (STATUS_TAG, row["status"])]
            if row.get("distinguishable") is not None:
                tags.append((NOISE_TAG, str(row["rank"] != 1 and not row["distinguishable"]).lower()))
            numbers = [(k, row.get(k)) for k in ("ci_low", "ci_high", "leader_beats")]
            metrics = [(k, v, row["best_epoch"]) for k, v in numbers if isinstance(v, float) and not math.isnan(v)]
            self._batch(run_id, metrics=metrics, tags=tags)
        if rows:
            ranked = [{k: v for k, v in r.items() if k != "path"} for r in rows]
            self._artifact(self.parent_id, json.dumps(ranked, indent=1, default=str), "ranking.json")
        tags, metrics = [(STATUS_TAG, "FINISHED")], []
        # the winner: none when no trial is within search.constraints (they rank last)
        leader = rows[0] if rows and rows[0]["best_epoch"] and eligible(rows[0]) else None
        if leader is not None:
            tags.append((BEST_TAG, leader["trial"]))
            keys = ("AP", "AP50", "AR100", "objective", "ci_low", "ci_high")
            metrics = [(f"best_{k}", leader[k], leader["best_epoch"]) for k in keys
                       if isinstance(leader.get(k), float) and not math.isnan(leader[k])]
        self._batch(self.parent_id, metrics=metrics, tags=tags)
        self._call("the sweep's run", self._client.set_terminated, self.parent_id, status="FINISHED")
