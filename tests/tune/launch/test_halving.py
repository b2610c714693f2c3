"""Batch halving's pieces without Ray's controller: its rungs, who goes on, and the searcher's batches.

The searcher is Ray's real OptunaSearch with a TPE sampler that learns from the first result, so a
batch sampled knowing other results would come out different.
"""

from __future__ import annotations

import math

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from tune.launch.evidence import kept_by_score as kept
from tune.launch.halving import BatchedSearcher, BatchHalving, rungs


def test_rungs_are_the_grace_period_times_powers_of_the_reduction_factor_below_the_run():
    assert rungs(grace=1, reduction_factor=2, max_t=8) == [1, 2, 4]
    assert rungs(grace=2, reduction_factor=3, max_t=20) == [2, 6, 18]
    assert rungs(grace=2, reduction_factor=2, max_t=4) == [2]
    assert rungs(grace=4, reduction_factor=2, max_t=4) == []  # no rung at the last epoch
    assert rungs(grace=1, reduction_factor=1.2, max_t=4) == [1, 2, 3]  # rounded, each epoch once


def test_the_best_ceil_n_over_eta_go_on_and_equal_scores_go_in_creation_order():
    assert kept({1: 0.1, 2: 0.3, 3: 0.2, 4: 0.0}, 2) == {2, 3}
    assert kept({1: 0.1, 2: 0.3, 3: 0.2}, 2) == {2, 3}  # ceil(3 / 2): ASHA's count from 3 distinct scores
    assert kept({5: 0.2, 6: 0.2, 7: 0.2, 8: 0.2}, 2) == {5, 6}  # a tie: the earlier trials
    assert kept({1: math.nan, 2: 0.0}, 2) == {2}  # NaN is worst
    assert kept({3: 0.0}, 3) == {3}  # a lone trial goes on


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _searcher(batch: int) -> BatchedSearcher:
    inner = OptunaSearch(space=_space, metric="score", mode="max",
                         sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1))
    scheduler = BatchHalving(metric="score", max_t=4, grace_period=1, reduction_factor=2, batch=batch,
                             num_samples=8, max_concurrent=100)
    return BatchedSearcher(inner, scheduler)


def _sweep(end_order: list[int]) -> tuple[dict[int, float], list[list[int]]]:
    """Six trials in batches of 2; ``end_order`` says which of trials 1-4 ends first. Returns each
    trial's sampled x and, at each sampling of trials 5 and 6, which trials the study knew."""
    searcher = _searcher(batch=2)
    sampled, known = {}, []

    def suggest(n: int) -> dict | None:
        config = searcher.suggest(f"t{n}")
        if config is not None:
            sampled[n] = config["x"]
            study = searcher.searcher._ot_study
            known.append([t.number + 1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
        return config

    for n in range(1, 5):
        assert suggest(n) is not None  # batches 0 and 1 draw knowing nothing
    assert searcher.suggest("t5") is None  # batch 2 waits for batch 0 to end
    for n in end_order:
        searcher.on_trial_result(f"t{n}", {"score": sampled[n], "training_iteration": 1})
        searcher.on_trial_complete(f"t{n}", result={"score": sampled[n]})
        if {1, 2} <= set(end_order[: end_order.index(n) + 1]):
            break
    assert suggest(5) is not None and suggest(6) is not None
    return sampled, known[4:]


def test_a_batch_is_drawn_knowing_exactly_the_batches_two_back_whatever_ended_first():
    in_order, known = _sweep([1, 2])
    assert known == [[1, 2], [1, 2]]
    for end_order in ([2, 1], [3, 4, 2, 1], [4, 1, 3, 2]):  # trials 3 and 4 ending first are not told yet
        assert _sweep(end_order) == (in_order, known)
    # and what the study knows does move the draw: told batch 0 before trial 3 is drawn, the same
    # sampler draws another x for it
    eager = _searcher(batch=2).searcher
    early = {}
    for n in (1, 2):
        early[n] = eager.suggest(f"t{n}")["x"]
        eager.on_trial_complete(f"t{n}", result={"score": early[n]})
    assert eager.suggest("t3")["x"] != pytest.approx(in_order[3])


def test_a_trial_stopped_while_held_is_told_with_the_result_it_reached():
    searcher = _searcher(batch=1)
    x = searcher.suggest("t1")["x"]
    searcher.on_trial_result("t1", {"score": 0.25, "training_iteration": 1})
    searcher.on_trial_complete("t1")  # Tune ends a PAUSED trial with no result
    searcher.tell_all()
    (told,) = searcher.searcher._ot_study.trials
    assert told.state == optuna.trial.TrialState.COMPLETE and told.value == 0.25 and told.params == {"x": x}
