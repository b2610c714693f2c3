"""Early stopping on evidence: a rung stops a trial only when its val interval lies below the cutoff.

A rung compares point estimates: on 48 val images a trial's AP is known to about ±0.03, so a trial
0.006 below the cutoff is stopped on a coin toss as often as on merit. Every epoch reports the
objective's 95% interval over the val images (``objective_low``, ``objective_high``: a paired
bootstrap of its stored detections, ``trainables.intervals.objective_interval``). With
``scheduler.stop_on: interval`` a rung stops a trial only when it is below the cutoff **and** the
upper end of its interval is too; a trial whose interval reaches the cutoff goes on, however far
its point estimate lies below. ``stop_on: score`` is the classic rule (the point estimate alone).

* Batch halving (``tune.launch.halving``): the cutoff is the score of the weakest of the
  ``ceil(n / reduction_factor)`` trials a rung keeps by score; ``kept_on_evidence`` adds those
  whose interval reaches it. Still decided from the batch's scores alone, so still order-free.
* ASHA (``EvidenceASHA``): Ray's cutoff at the rung (its ``1 - 1/reduction_factor`` quantile of the
  scores recorded there before this trial), and the trial goes on when its interval reaches it.

What the rule costs and saves on the benchmark's sweeps is in docs/search-spaces.md ("Early
stopping on evidence"), measured by ``benchmarks/bench_stopping.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

__all__ = ["HIGH", "STOP_RULES", "kept_by_score", "kept_on_evidence", "EvidenceASHA"]

HIGH = "objective_high"  # the reported upper end of an epoch's 95% interval on the objective
STOP_RULES = ("interval", "score")  # scheduler.stop_on


def finite(value: Any) -> float:
    """``value`` as a float; -inf for None, NaN or anything that is not a number (worst, never kept)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(out) else out


def kept_by_score(scores: Mapping[int, float], reduction_factor: float) -> set[int]:
    """The creation numbers that go on from a rung: the best ``ceil(n / reduction_factor)`` by score,
    equal scores in creation order (a NaN score is worst)."""
    order = sorted(scores, key=lambda number: (-finite(scores[number]), number))
    return set(order[: max(1, math.ceil(len(order) / reduction_factor))])


def kept_on_evidence(scores: Mapping[int, float], highs: Mapping[int, float], reduction_factor: float) -> set[int]:
    """``kept_by_score``, plus every trial whose interval's upper end (``highs``; missing or NaN: no
    evidence, so not kept on it) reaches the cutoff: the score of the weakest trial kept by score."""
    by_score = kept_by_score(scores, reduction_factor)
    cutoff = min(finite(scores[n]) for n in by_score)
    return by_score | {n for n in scores if n not in by_score and finite(highs.get(n)) >= cutoff > -math.inf}


class EvidenceASHA(ASHAScheduler):
    """Ray's ASHA, except that a trial its rung would stop goes on while the upper end of its
    interval (``high_attr`` in the result) reaches the rung's cutoff."""

    def __init__(self, *, high_attr: str = HIGH, **kwargs):
        if kwargs.get("mode", "max") != "max":
            raise ValueError("EvidenceASHA maximises: a rung compares the upper end of a trial's interval")
        super().__init__(**kwargs)
        self._high_attr = high_attr
        self.spared = 0  # trials a rung would have stopped on the point estimate alone

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action != TrialScheduler.STOP or result.get(self._time_attr, 0) >= self._max_t:
            return action
        cutoff = self._cutoff_passed(trial, result[self._time_attr])
        if cutoff is not None and finite(result.get(self._high_attr)) >= cutoff:
            self._num_stopped -= 1
            self.spared += 1
            return TrialScheduler.CONTINUE
        return action

    def _cutoff_passed(self, trial, at: float) -> float | None:
        """The cutoff the trial was just compared with: its bracket's highest rung at or below ``at``
        that holds it (the one this result was recorded at), over the scores recorded there before."""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return None
        for milestone, recorded in bracket._rungs:  # highest first
            if at >= milestone and trial.trial_id in recorded:
                cutoff = bracket.cutoff({t: v for t, v in recorded.items() if t != trial.trial_id})
                return None if cutoff is None else float(cutoff)
        return None
