"""``tune.run.front``: the Pareto front of a best score against costs, and the constraints' marks."""

from __future__ import annotations

import math

import pytest

from tune.run.front import constraint_values, meets, pareto_front, violations


def test_the_front_keeps_what_nothing_beats_on_every_objective():
    points = {"a": (0.30, 50.0), "b": (0.25, 20.0), "c": (0.24, 30.0), "d": (0.30, 60.0), "e": (0.10, 20.0)}
    # c: b is more accurate and faster; d: a is as accurate and faster; e: b is as fast and more accurate
    assert pareto_front(points) == {"a", "b"}
    assert pareto_front({"a": (0.3, 10.0), "b": (0.3, 10.0)}) == {"a", "b"}  # equal points: both kept
    assert pareto_front({"a": (0.3, 10.0, 5.0), "b": (0.2, 5.0, 9.0), "c": (0.2, 10.0, 9.0)}) == {"a", "b"}
    # a cost not measured is the worst: beaten by a trial as accurate with a figure
    assert pareto_front({"a": (0.3, math.nan), "b": (0.3, 40.0), "c": (0.4, math.nan)}) == {"b", "c"}
    assert pareto_front({}) == set()


def test_limits_in_words_and_as_optuna_constraint_values():
    limits = {"latency_ms": (None, 30.0), "params": (1e6, 5e6)}
    assert violations({"latency_ms": 41.5, "params": 2e6}, limits) == ["latency_ms 41.5 > max 30"]
    assert violations({"latency_ms": 12.0, "params": 5e5}, limits) == ["params 500000 < min 1e+06"]
    assert violations({"params": 2e6}, limits) == ["latency_ms not measured"]
    assert meets({"latency_ms": 30.0, "params": 5e6}, limits) and not meets({}, limits)
    assert meets({}, {})  # no limits: everything is feasible
    assert constraint_values({"latency_ms": 41.5, "params": 2e6}, limits) == {
        "latency_ms_max": pytest.approx(11.5), "params_min": -1e6, "params_max": -3e6}
    assert constraint_values({"latency_ms": math.nan}, {"latency_ms": (None, 30.0)}) == {"latency_ms_max": 1.0}
