"""Early stopping whose decisions do not depend on the order in which results arrive.

Ray's ASHA decides a trial's rung the moment the trial reaches it, against whatever results other
trials have recorded by then; which trial gets there first is a matter of timing, so the same
seeded sweep can stop different trials, and the searcher, told of different results, samples
different configs. ``scheduler.name: halving`` replaces both with decisions that depend on
creation order alone:

* **Batches.** Trial ``n`` (creation number, from 1) belongs to batch ``(n - 1) // batch``
  (``scheduler.batch``, 4 by default, whatever ``max_concurrent`` is).
* **Sampling** (``BatchedSearcher``, wrapping the sweep's OptunaSearch). Batch ``b`` is sampled
  once every trial of batches ``0 .. b-2`` has ended, and the searcher is told those trials'
  results just before, in creation order, and no others: batch ``b`` is drawn knowing exactly
  batches ``0 .. b-2``, whichever trial ended first, while batch ``b+1`` can start as batch
  ``b``'s last trials train. It also keeps at most ``max_concurrent`` trials running; trials held
  at a rung do not count, which Ray's ``ConcurrencyLimiter`` cannot express. The study in
  ``<run>/optuna.journal`` (``tune.launch.searcher``) holds the trials in creation order, an ended
  trial RUNNING there until it is told.
* **Rungs** (``BatchHalving``, a Tune ``TrialScheduler``). At each rung (epochs ``grace``,
  ``grace * reduction_factor``, ... below ``training.epochs``) a trial waits, paused (checkpointed,
  its worker freed), until every trial of its batch still alive has reached the rung. Then the best
  ``ceil(n / reduction_factor)`` of those ``n`` by the rung epoch's ``score`` go on, equal scores in
  creation order, and the rest stop: the count ASHA keeps from ``n`` distinct scores. With
  ``scheduler.stop_on: interval`` a trial whose 95% interval reaches the weakest kept score goes on
  too (``tune.launch.evidence``). Waiting trials go on in creation order, at most
  ``max_concurrent`` running at a time.
* **Kill and resume** (``HalvingState``, a Tune ``Callback``). The rung scores and decisions and
  the searcher's batch book-keeping are saved with each of Ray's experiment snapshots and restored
  by ``boxtune resume``: a trial waiting at a rung waits again, a decision taken is never taken
  again, and one lost with the kill is taken from the same scores.

What this guarantees, and under which conditions, is in docs/design.md ("Reproducible sweeps").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from tune.launch.evidence import HIGH, kept_by_score, kept_on_evidence
from tune.run.view import UNNUMBERED, creation_number

__all__ = ["BatchHalving", "BatchedSearcher", "HalvingState", "rungs", "DEFAULT_BATCH"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 4  # trials decided together at each rung (scheduler.batch)

_CONTINUE, _STOP = "continue", "stop"


def rungs(*, grace: int, reduction_factor: float, max_t: int) -> list[int]:
    """The rung epochs: ``grace``, ``grace * reduction_factor``, ... (rounded), each below ``max_t``."""
    out: list[int] = []
    at = float(grace)
    while round(at) < max_t:
        if not out or round(at) > out[-1]:
            out.append(round(at))
        at *= reduction_factor
    return out


class BatchHalving(TrialScheduler):
    """Successive halving decided per batch of trials at each rung (see the module docstring)."""

    def __init__(self, *, metric: str, time_attr: str = "epoch", max_t: int, grace_period: int,
                 reduction_factor: float, batch: int = DEFAULT_BATCH, num_samples: int, max_concurrent: int,
                 stop_on: str = "score", high_attr: str = HIGH):
        super().__init__()
        self._metric = metric
        self.stop_on = stop_on  # "score", or "interval": see tune.launch.evidence
        self._high_attr = high_attr
        self.time_attr = time_attr
        self.max_t = max_t
        self.reduction_factor = reduction_factor
        self.batch = batch
        self.num_samples = num_samples
        self.max_concurrent = max_concurrent
        self.rungs = rungs(grace=grace_period, reduction_factor=reduction_factor, max_t=max_t)
        # the state that HalvingState saves with Ray's experiment snapshot:
        self._scores: dict[int, dict[int, float]] = {}  # rung epoch -> creation number -> its score there
        self._highs: dict[int, dict[int, float]] = {}  # rung epoch -> creation number -> its interval's upper end
        self._decided: dict[int, dict[int, str]] = {}  # rung epoch -> creation number -> continue / stop
        self._ended: dict[int, int] = {}  # creation number -> the epoch it ended at (finished, stopped, errored)
        # not saved: the live controller and trials of this driver
        self._controller = None
        self._trials: dict[int, Trial] = {}

    # -- state, for HalvingState --------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"scores": self._scores, "highs": self._highs, "decided": self._decided, "ended": self._ended}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._scores = {int(r): {int(n): float(s) for n, s in v.items()} for r, v in state["scores"].items()}
        self._highs = {int(r): {int(n): float(s) for n, s in v.items()} for r, v in state.get("highs", {}).items()}
        self._decided = {int(r): {int(n): str(d) for n, d in v.items()} for r, v in state["decided"].items()}
        self._ended = {int(n): int(e) for n, e in state["ended"].items()}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_controller"] = None
        state["_trials"] = {}
        return state

    def __setstate__(self, state):
        # pickled (tuner.pkl) by a boxtune from before rungs could stop on evidence: that sweep keeps
        # the point rule its earlier decisions were taken by
        state.setdefault("stop_on", "score")
        state.setdefault("_high_attr", HIGH)
        state.setdefault("_highs", {})
        self.__dict__.update(state)

    # -- book-keeping ------------------------------------------------------------------------------
    def _number(self, trial: Trial) -> int:
        number = creation_number(getattr(trial, "experiment_tag", None))
        if number == UNNUMBERED:
            raise RuntimeError(f"trial {trial.trial_id} has no creation number in its tag {trial.experiment_tag!r}")
        return number

    def _members(self, number: int) -> range:
        """The creation numbers of ``number``'s batch."""
        first = (number - 1) // self.batch * self.batch + 1
        return range(first, min(first + self.batch, self.num_samples + 1))

    def _alive_at(self, number: int, rung: int) -> bool:
        """Whether trial ``number`` reaches ``rung``: it has not ended before it, nor been stopped at an earlier rung."""
        if self._ended.get(number, self.max_t) < rung:
            return False
        return all(self._decided.get(r, {}).get(number) != _STOP for r in self.rungs if r < rung)

    def _decide(self, batch_of: int, rung: int, *, reporting: int | None = None) -> bool:
        """Decide ``rung`` for the batch of trial ``batch_of`` if every member still alive there has
        reached it, and stop the held members that do not go on (``reporting``, the trial whose
        result is being handled, learns its decision from the return of ``on_trial_result``).
        Whether the rung is decided."""
        if any(n in self._decided.get(rung, {}) for n in self._members(batch_of)):
            return True
        scores = self._scores.get(rung, {})
        alive = [n for n in self._members(batch_of) if self._alive_at(n, rung)]
        if not alive or any(n not in scores for n in alive):
            return False
        at_rung = {n: scores[n] for n in alive}
        if self.stop_on == "interval":
            going_on = kept_on_evidence(at_rung, self._highs.get(rung, {}), self.reduction_factor)
        else:
            going_on = kept_by_score(at_rung, self.reduction_factor)
        decisions = self._decided.setdefault(rung, {})
        for n in alive:
            decisions[n] = _CONTINUE if n in going_on else _STOP
        log.info("rung at epoch %d, batch %d: trials %s go on, %s stop", rung, (batch_of - 1) // self.batch + 1,
                 sorted(going_on), sorted(set(alive) - going_on))
        for n in alive:
            trial = self._trials.get(n)
            if n != reporting and decisions[n] == _STOP and trial is not None and self._controller is not None:
                if trial.status == Trial.PAUSED or trial.is_saving:
                    self._stop_held(trial)
        return True

    def _stop_held(self, trial: Trial) -> None:
        """Stop a trial held at a rung. Tune 2.x records a status change in its experiment snapshot only
        for a trial with a live worker; a held trial has none, so it is marked for the snapshot here,
        or the folder (and a resume) would still see it PAUSED."""
        self._controller.stop_trial(trial)
        controller = getattr(self._controller, "_tune_controller", self._controller)
        mark = getattr(controller, "_mark_trial_to_checkpoint", None)
        if mark is not None:
            mark(trial)

    def _pending_rung(self, number: int, epoch: int) -> tuple[int, str | None] | None:
        """The first rung at or below ``epoch`` that ``number`` has not been let past: (rung, its
        decision or None while undecided); None when it has passed them all."""
        for rung in self.rungs:
            if rung > epoch:
                return None
            decision = self._decided.get(rung, {}).get(number)
            if decision != _CONTINUE:
                return rung, decision
        return None

    def busy(self) -> int:
        """Trials running, or about to (PENDING); a trial held at a rung is PAUSED and not counted."""
        if self._controller is None:
            return 0  # Tune has added no trial yet
        return sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in self._controller.get_trials())

    def waiting_to_go_on(self) -> bool:
        """Whether a held trial may go on and waits for a free slot (it comes before a new trial)."""
        return any(t.status == Trial.PAUSED and self._may_go_on(n) for n, t in self._trials.items())

    def _may_go_on(self, number: int) -> bool:
        epoch = self._epoch(self._trials[number])
        pending = self._pending_rung(number, epoch)
        return number not in self._ended and pending is None

    def _epoch(self, trial: Trial) -> int:
        result = trial.last_result or {}
        return int(result.get(self.time_attr, result.get("training_iteration", 0)) or 0)

    # -- TrialScheduler ------------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, **spec) -> bool:
        if metric is not None and metric != self._metric:
            return False
        return mode in (None, "max")

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._controller = tune_controller
        number = self._number(trial)
        self._trials[number] = trial
        if trial.status != Trial.PENDING:
            return
        # a trial of a resumed sweep: one that waited at a rung waits again, instead of training
        # past it; one that a decision stopped is stopped before it trains another epoch
        pending = self._pending_rung(number, self._epoch(trial))
        if pending is not None and pending[1] != _CONTINUE and self._epoch(trial) >= pending[0]:
            trial.set_status(Trial.PAUSED)  # before Tune files it under its status (TuneController.add_trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._controller = tune_controller
        number = self._number(trial)
        self._trials[number] = trial
        epoch = int(result.get(self.time_attr, result.get("training_iteration", 0)))
        pending = self._pending_rung(number, epoch)
        if pending is None:
            return TrialScheduler.CONTINUE
        rung, decision = pending
        if decision == _STOP:
            return TrialScheduler.STOP
        if epoch != rung:
            log.warning("trial %d reported epoch %d without a result at rung %d; its score there is taken from "
                        "epoch %d", number, epoch, rung, epoch)
        self._scores.setdefault(rung, {}).setdefault(number, float(result[self._metric]))
        self._highs.setdefault(rung, {}).setdefault(number, float(result.get(self._high_attr, math.nan)))
        if not self._decide(number, rung, reporting=number):
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE if self._decided[rung].get(number) == _CONTINUE else TrialScheduler.STOP

    def _end(self, trial: Trial, result: Mapping[str, Any] | None) -> None:
        number = self._number(trial)
        self._trials[number] = trial
        self._ended.setdefault(number, self._epoch(trial) if not result else
                               int(result.get(self.time_attr, result.get("training_iteration", 0)) or 0))
        # a trial that ends early (an error) can be what the rest of its batch waits for
        for rung in self.rungs:
            if rung > self._ended[number]:
                self._decide(number, rung)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._controller = tune_controller
        self._end(trial, result)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._controller = tune_controller
        self._end(trial, None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._controller = tune_controller
        self._end(trial, None)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._controller = tune_controller
        trials = sorted(tune_controller.get_trials(), key=self._number)
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        # a restored trial that a decision stopped, held so that it trains no further: stop it now
        for trial in trials:
            number = self._number(trial)
            self._trials[number] = trial
            pending = self._pending_rung(number, self._epoch(trial))
            if trial.status == Trial.PAUSED and pending is not None and pending[1] == _STOP:
                self._stop_held(trial)
        if self.busy() >= self.max_concurrent:
            return None
        for trial in trials:
            if trial.status == Trial.PAUSED and self._may_go_on(self._number(trial)):
                return trial
        return None

    def debug_string(self) -> str:
        return f"Successive halving per batch of {self.batch} at epochs {self.rungs}"


class BatchedSearcher(Searcher):
    """Hands out the inner searcher's configs in batches, told of results batch by batch (see the module docstring)."""

    def __init__(self, searcher: Searcher, scheduler: BatchHalving):
        self.searcher = searcher
        self.scheduler = scheduler
        self._given = 0  # configs handed out: trial n (creation number) is the n-th
        self._numbers: dict[str, int] = {}  # trial id -> creation number
        self._last: dict[str, dict] = {}  # trial id -> its latest result
        self._ended: dict[int, tuple[str, dict | None, bool]] = {}  # number -> (trial id, result, error), not yet told
        self._told: set[int] = set()
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # -- state, for HalvingState --------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"given": self._given, "numbers": dict(self._numbers), "last": dict(self._last),
                "ended": dict(self._ended), "told": sorted(self._told)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._given = int(state["given"])
        self._numbers = dict(state["numbers"])
        self._last = dict(state["last"])
        self._ended = {int(n): tuple(v) for n, v in state["ended"].items()}
        self._told = set(state["told"])

    # -- Searcher ----------------------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return True  # the scheduler's limit, which does not count held trials, is the one that holds

    def _batch(self, number: int) -> int:
        return (number - 1) // self.scheduler.batch

    def suggest(self, trial_id: str) -> dict | None:
        number = self._given + 1
        batch = self._batch(number)
        if self.scheduler.waiting_to_go_on() or self.scheduler.busy() >= self.scheduler.max_concurrent:
            return None
        known = [n for n in range(1, number) if self._batch(n) <= batch - 2]
        if any(n not in self._ended and n not in self._told for n in known):
            return None  # batch b is drawn knowing batches 0 .. b-2, complete
        for n in known:  # told in creation order, whatever order they ended in
            if n not in self._told:
                ended_id, result, error = self._ended.pop(n)
                self.searcher.on_trial_complete(ended_id, result=result, error=error)
                self._told.add(n)
        config = self.searcher.suggest(trial_id)
        if config is not None and config != Searcher.FINISHED:
            self._given = number
            self._numbers[trial_id] = number
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last[trial_id] = dict(result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self._numbers.get(trial_id)
        if number is None or number in self._ended or number in self._told:
            return
        # a trial stopped while held at a rung ends with no result: its latest one is what it reached
        self._ended[number] = (trial_id, result or self._last.get(trial_id), error)
        self._last.pop(trial_id, None)

    def tell_all(self) -> None:
        """Tell the inner searcher every ended trial not told yet, in creation order."""
        for n in sorted(self._ended):
            ended_id, result, error = self._ended.pop(n)
            self.searcher.on_trial_complete(ended_id, result=result, error=error)
            self._told.add(n)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)  # this wrapper's own state goes with HalvingState

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class HalvingState(Callback):
    """Saves the scheduler's rung book and the searcher's batch book with each of Ray's experiment
    snapshots (``callback-states-*.pkl``), and restores them on ``boxtune resume``."""

    def __init__(self, scheduler: BatchHalving, searcher: BatchedSearcher):
        self.scheduler = scheduler
        self.searcher = searcher

    def get_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.get_state(), "searcher": self.searcher.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["scheduler"])
        self.searcher.set_state(state["searcher"])

    def on_experiment_end(self, trials, **info) -> None:
        self.searcher.tell_all()  # the study ends knowing every trial, in creation order
