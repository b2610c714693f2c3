"""The live sweep table: one row per reported epoch, one line per trial that stops, finishes or fails.

Ray's default output engine (Ray 2.x, ``RAY_AIR_NEW_OUTPUT``) ignores ``progress_reporter`` and
shows the first few numeric result keys (epoch and losses here), never AP or the
hyperparameters. So the sweep runs Ray with ``verbose=0`` and this ``tune.Callback`` prints what
a person watches a sweep for::

    trial        status  epoch   AP     AR100  best AP  hyperparameters
    4f1e2_00000  RUNNING   1/4  0.012  0.054    0.012  opt=sgd lr=0.0123 freeze=3 hflip=0.31
    -- 4f1e2_00001 stopped by ASHA after epoch 2/4: best AP 0.008 (sweep best 0.031, 4f1e2_00000; the best is ahead in 88% of paired resamples: within noise)

A trial whose Ray node is lost gets one line as soon as the driver notices (``tune.launch.node_loss``),
saying whether and from where Tune retries it; Ray's own output about it goes to ``ray_output.log``::

    -- 4f1e2_00001 lost its node 1a2b3c (127.0.0.2): retry 1 of 2 from epoch 2's checkpoint
    -- 4f1e2_00001 lost its node 1a2b3c (127.0.0.2): no retries left: ERROR

The remark after the sweep best compares the two trials' best epochs on the same bootstrap
resamples of the val images (``tune.run.intervals``): "told apart" from 95%, else "within noise".
``best AP`` is the trial's best epoch so far; ``score`` (the sweep objective's best, when
trials report one) follows it, then ``GPU MiB`` for trials on a GPU: the peak memory the trial's
allocator held so far, what packing several trials on one card must fit. Hyperparameters are the ones the search space sampled, under short
names, floats to 3 significant digits; a conditional parameter shows only where it was sampled.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from ray import tune

from tune.launch import node_loss
from tune.run.front import meets, violations
from tune.run.intervals import BEATS
from tune.run.ranking import UNNUMBERED, creation_number, rank_order, result_score
from tune.trial_config import format_hparams

__all__ = ["ProgressTable"]

log = logging.getLogger(__name__)

_HEADER_EVERY = 25  # rows between repeated headers, so a scrolled terminal still shows the columns


def _metric(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "    -"
    return "  nan" if math.isnan(v) else f"{v:.3f}"


def _mib(value: Any) -> str:
    try:
        return f"{float(value):.0f}"
    except (TypeError, ValueError):
        return "-"


class ProgressTable(tune.Callback):
    """Prints the sweep's live table on the driver (see the module docstring)."""

    # a table pickled by an older run (and unpickled by `boxtune resume`) lacks these
    _by_score = False
    run: str | None = None
    _dirs: dict[str, str] = {}
    _numbers: dict[str, int] = {}
    stopper = "ASHA"
    _told: set[tuple[str, str]] = set()

    def __init__(self, *, max_epochs: int, by_score: bool = False, run: str | None = None, stopper: str = "ASHA",
                 limits: dict[str, tuple[float | None, float | None]] | None = None):
        self.max_epochs = max_epochs
        self.limits = dict(limits or {})  # search.constraints (min, max); a table pickled before them has none
        self._by_score = by_score  # the objective is not plain AP: a trial's end line gives its score too
        self.stopper = stopper  # what stops trials early, as the end line names it
        self.run = run  # the sweep folder: its stored detections say whether a trial is within noise of the best
        self._dirs = {}  # trial id -> its folder in the sweep folder
        self._numbers = {}  # trial id -> its creation number: equal scores rank in creation order
        self._paired = None  # tune.run.intervals.PairedSamples, made on first use (not pickled)
        self._rows = 0
        self._best: dict[str, dict[str, Any]] = {}  # trial id -> its latest result
        self._score = False  # the objective's score column, once a trial reports one
        self._gpu = False  # peak GPU memory held by the trial (MiB), once a trial on a GPU reports it
        self._told = set()  # (trial id, node id): the losses already told

    def _echo(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)  # sys.stdout looked up now: a test's capture sees it

    # -- the table ------------------------------------------------------------------------------
    def _header(self) -> str:
        score = "  score" if self._score else ""
        gpu = " GPU MiB" if self._gpu else ""
        return (f"{'trial':<12} {'status':<8} {'epoch':>5} {'AP':>6} {'AR100':>6} {'best AP':>7}{score}{gpu}"
                f"  hyperparameters")

    def row(self, trial_id: str, status: str, result: dict[str, Any], config: dict[str, Any]) -> str:
        epoch = f"{int(result.get('epoch', 0))}/{self.max_epochs}"
        score = f" {_metric(result.get('best_score')):>6}" if self._score else ""
        gpu = f" {_mib(result.get('gpu_reserved_mib')):>7}" if self._gpu else ""
        return (f"{trial_id:<12} {status:<8} {epoch:>5} {_metric(result.get('AP')):>6} {_metric(result.get('AR100')):>6} "
                f"{_metric(result.get('best_AP')):>7}{score}{gpu}  {format_hparams(config)}")

    def _sweep_best(self) -> tuple[str, dict[str, Any]] | None:
        if not self._best:
            return None
        numbers, limits = self._numbers, getattr(self, "limits", {})
        # search.constraints: a trial outside them is never the sweep's best (tune.run.front)
        best = min(self._best.items(), key=lambda kv: (not meets(kv[1], limits),
                                                       *rank_order(result_score(kv[1]), numbers.get(kv[0], UNNUMBERED), kv[0])))
        return best if meets(best[1], limits) else None  # no trial within the limits yet: no best

    def _ended(self, trial, how: str) -> None:
        result = self._best.get(trial.trial_id) or {}
        epochs = int(result.get("epoch", 0))
        if how == "complete":
            how = "finished" if epochs >= self.max_epochs else f"stopped by {self.stopper}"
        line = f"-- {trial.trial_id} {how} after epoch {epochs}/{self.max_epochs}: best AP {_metric(result.get('best_AP')).strip()}"
        broken = violations(result, getattr(self, "limits", {})) if result else []
        if broken:
            line += f" (outside search.constraints: {', '.join(broken)})"
        # trials rank by the objective: where it is not plain AP, the score is shown and the sweep's best is by it
        if self._by_score:
            line += f", score {_metric(result.get('best_score')).strip()}"
        best = self._sweep_best()
        if best is not None:
            shown, key = ("score ", "best_score") if self._by_score else ("", "best_AP")
            line += f" (sweep best {shown}{_metric(best[1].get(key)).strip()}, {best[0]}{self._standing(trial, best)})"
        self._echo(line)

    def _standing(self, trial, best: tuple[str, dict[str, Any]]) -> str:
        """``; the best is ahead in 88% of paired resamples: within noise`` (the sweep best against
        this trial; told apart from 95%), or '' (this trial is the best, or its detections are not
        in storage yet)."""
        best_id, best_result = best
        if self.run is None or best_id == trial.trial_id or trial.trial_id not in self._best:
            return ""
        try:
            if getattr(self, "_paired", None) is None:
                from tune.run.intervals import PairedSamples

                self._paired = PairedSamples(self.run)
            beaten = self._paired.beaten((self._dirs[best_id], int(best_result.get("best_epoch", 0))),
                                         (self._dirs[trial.trial_id], int(self._best[trial.trial_id].get("best_epoch", 0))))
        except Exception as err:  # noqa: BLE001 - a remark on the live line must never stop the sweep
            log.debug("no interval for trial %s: %s", trial.trial_id, err)
            return ""
        if beaten is None:
            return ""
        return f"; the best is ahead in {beaten:.0%} of paired resamples: {'told apart' if beaten >= BEATS else 'within noise'}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_paired"] = None  # caches of arrays, rebuilt after a resume
        return state

    # -- a lost node (tune.launch.node_loss) ------------------------------------------------------------
    def _lost(self, trial, node_id: str, node_ip: str, *, failed: bool) -> None:
        """Tell (once per trial and node) and record that ``trial`` lost its node. ``failed``: Tune
        has counted the failure already (on_trial_recover, on_trial_error), else it is still to come."""
        if (trial.trial_id, node_id) in self._told:
            return
        self._told = {*self._told, (trial.trial_id, node_id)}
        failures = int(getattr(trial, "num_failures", 0)) + (0 if failed else 1)
        retries = int(getattr(trial, "max_failures", 0))
        retry = failures if retries < 0 or failures <= retries else None
        result = self._best.get(trial.trial_id) or {}
        epoch = int(result["epoch"]) if getattr(trial, "checkpoint", None) is not None and "epoch" in result else None
        start = f"from epoch {epoch}'s checkpoint" if epoch is not None else "from the start"
        if retry is None:
            then = "no retries left: ERROR"
        elif retry == 0:  # Ray does not count the loss of a node it was told is preempted (a spot instance)
            then = f"retry {start} (a preempted node: not counted against retries)"
        else:
            then = f"retry {retry}{f' of {retries}' if retries >= 0 else ''} {start}"
        self._echo(f"-- {trial.trial_id} lost its node {node_loss.short_id(node_id)} ({node_ip or '?'}): {then}")
        if self.run is None:
            return
        entry = {"trial": trial.trial_id, "node_id": node_id, "node_ip": node_ip, "at": time.time(), "epoch": epoch,
                 "retry": retry, "retries": retries}
        try:
            from tune.run.folder import RunFolder

            RunFolder.at(self.run).record_node_loss(entry)
        except OSError as err:  # the storage is unreachable now: the line above still told it
            log.warning("could not record the lost node of trial %s in %s: %s", trial.trial_id, self.run, err)

    def _node_failure(self, trial) -> bool:
        """Tune reports a failure of ``trial``: if its node is lost, tell it, and send the block Ray's
        output engine prints next to ``ray_output.log``; whether it was a lost node."""
        watch = node_loss.active()
        where = watch.node_of(trial.trial_id) if watch is not None else None
        if where is None or not watch.is_lost(where[0]):
            return False
        node_id, node_ip = where
        self._lost(trial, node_id, node_ip or watch.node_ip(node_id), failed=True)
        watch.diverting = True  # Ray's engine prints its error block right after this callback
        return True

    # -- tune.Callback ------------------------------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        watch = node_loss.active()
        if watch is not None:
            watch.diverting = False

    def on_step_end(self, iteration, trials, **info):
        watch = node_loss.active()
        if watch is None:
            return
        watch.diverting = False
        lost = watch.poll()
        if not lost:
            return
        running = [t for t in trials if str(getattr(t, "status", "")) == "RUNNING"]
        for node_id in lost:
            on_it = [t for t in running if (watch.node_of(t.trial_id) or ("",))[0] == node_id]
            for trial in on_it:
                self._lost(trial, node_id, watch.node_of(trial.trial_id)[1] or watch.node_ip(node_id), failed=False)
            if not on_it and not any(node == node_id for _, node in self._told):
                self._echo(f"-- Ray node {node_loss.short_id(node_id)} ({watch.node_ip(node_id) or '?'}) lost; "
                           f"no trial was running on it")

    def on_trial_start(self, iteration, trials, trial, **info):
        watch = node_loss.active()
        if watch is not None:
            watch.started(trial.trial_id, getattr(getattr(trial, "storage", None), "trial_dir_name", None))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._node_failure(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        watch = node_loss.active()
        if watch is not None:
            watch.note(trial.trial_id, result.get("node_id"), result.get("node_ip"))
        if "AP" not in result:
            return
        self._best[trial.trial_id] = dict(result)
        self._numbers = {**self._numbers, trial.trial_id: creation_number(getattr(trial, "experiment_tag", None))}
        folder = getattr(getattr(trial, "storage", None), "trial_dir_name", None)
        if folder is not None:
            self._dirs = {**self._dirs, trial.trial_id: folder}
        if "best_score" in result and not self._score:
            self._score = True
            self._rows = 0  # the header changes: print it again
        if "gpu_reserved_mib" in result and not self._gpu:
            self._gpu = True
            self._rows = 0
        if self._rows % _HEADER_EVERY == 0:
            self._echo(self._header())
        self._rows += 1
        self._echo(self.row(trial.trial_id, "RUNNING", result, dict(trial.config)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._forget(trial)
        self._ended(trial, "complete")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._node_failure(trial)
        self._forget(trial)
        self._ended(trial, "errored")

    def _forget(self, trial) -> None:
        watch = node_loss.active()
        if watch is not None:
            watch.forget(trial.trial_id)

