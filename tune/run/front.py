"""Several objectives: which trials meet ``search.constraints``, which form the Pareto front, and
which one "the winner" is.

With ``search.metric: [AP, latency_ms]`` a trial's point is its best score (the accuracy objective
with the AR100 tiebreak, ``trainables.objective``), maximised, and each named cost figure
(``tune.launch.costs``), minimised. A trial is on the front when no other trial is at least as
good on every objective and better on one. A cost not measured (NaN) counts as the worst.

``search.constraints`` (``{latency_ms: {max: 30}}``) marks a trial feasible when every limited
figure is measured and within its limits. An infeasible trial is trained, recorded and ranked,
after every feasible one, and is never on the front.

The winner, wherever one trial is chosen (``export`` without ``--pick``, ``report.test_top``, the
confirmation stage, the best-config), is the first row of the ranking: the most accurate feasible
trial. It is on the front unless another feasible trial has exactly its score and costs less: an
exact tie goes to the trial created first, as with one objective, so that every place that
ranks keeps one order (``tune.run.ranking.rank_order``). ``checkpoints.keep_trials`` keeps the front's checkpoints beside the top
trials (``tune.launch.retention``), and ``boxtune export --pick`` chooses elsewhere on the front
(``tune.ship.pick``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from trainables.objective import as_number

__all__ = ["Limits", "limits_of", "describe_limits", "meets", "violations", "constraint_values", "pareto_front",
           "feasible_front", "eligible", "FEASIBLE", "FRONT"]

FEASIBLE = "feasible"  # the ranking's columns: with search.constraints, and with several objectives
FRONT = "front"

Limits = Mapping[str, tuple[float | None, float | None]]  # figure -> (min, max)


def limits_of(search) -> dict[str, tuple[float | None, float | None]]:
    """``search.constraints`` (a ``SearchConfig``) as plain (min, max) pairs, picklable."""
    return {name: (bound.min, bound.max) for name, bound in search.constraints.items()}


def describe_limits(limits: Limits) -> str:
    """``latency_ms <= 30, params >= 1e+06 <= 5e+06``: the limits as the report and errors write them."""
    return ", ".join(f"{name}{'' if low is None else f' >= {low:g}'}{'' if high is None else f' <= {high:g}'}"
                     for name, (low, high) in limits.items())


def _figure(figures: Mapping[str, Any], name: str) -> float:
    return as_number(figures.get(name))


def violations(figures: Mapping[str, Any], limits: Limits) -> list[str]:
    """What ``figures`` break of ``limits``, in words (``latency_ms 41.2 > max 30``); [] when met."""
    out = []
    for name, (low, high) in limits.items():
        value = _figure(figures, name)
        if math.isnan(value):
            out.append(f"{name} not measured")
        elif high is not None and value > high:
            out.append(f"{name} {value:g} > max {high:g}")
        elif low is not None and value < low:
            out.append(f"{name} {value:g} < min {low:g}")
    return out


def constraint_values(figures: Mapping[str, Any], limits: Limits) -> dict[str, float]:
    """Optuna's constraint values (feasible when every one is <= 0): ``latency_ms_max`` = figure - max,
    ``latency_ms_min`` = min - figure; a figure not measured gives 1.0 (not met)."""
    out = {}
    for name, (low, high) in limits.items():
        value = _figure(figures, name)
        for side, bound, excess in (("max", high, lambda v, b: v - b), ("min", low, lambda v, b: b - v)):
            if bound is not None:
                out[f"{name}_{side}"] = 1.0 if math.isnan(value) else excess(value, bound)
    return out


def meets(figures: Mapping[str, Any], limits: Limits) -> bool:
    return not violations(figures, limits)


def eligible(row: Mapping[str, Any]) -> bool:
    """Whether a ranking row may be taken as a winner: not marked outside ``search.constraints``
    (a row without the ``feasible`` column, from a sweep without limits, always may)."""
    return row.get(FEASIBLE) is not False


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` at least as good as ``b`` everywhere and better somewhere (first maximised, rest minimised)."""
    better = False
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if i > 0:
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Mapping[Hashable, Sequence[float]]) -> set[Hashable]:
    """The keys of the non-dominated points: the first coordinate is maximised (a best score), the
    others minimised (costs). NaN is the worst value of its coordinate. Equal points are all kept."""
    clean = {k: tuple((-math.inf if i == 0 else math.inf) if math.isnan(float(v)) else float(v)
                      for i, v in enumerate(p)) for k, p in points.items()}
    return {k for k, p in clean.items() if not any(_dominates(q, p) for other, q in clean.items() if other != k)}


def feasible_front(trials: Mapping[Hashable, tuple[float, Mapping[str, Any]]], costs: Sequence[str],
                   limits: Limits) -> set[Hashable]:
    """The front of ``trials`` (key -> (best score, cost figures)) among those that meet ``limits``."""
    points = {k: (score, *(_figure(figures, c) for c in costs))
              for k, (score, figures) in trials.items() if meets(figures, limits)}
    return pareto_front(points)
