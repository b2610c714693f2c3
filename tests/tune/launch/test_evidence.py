"""Early stopping on evidence: a rung stops a trial only when its whole interval lies below the
cutoff, in batch halving and in ASHA (Ray's own bracket underneath). Real Tune trials (stubs:
no trainable runs) and no controller: the decisions alone."""

from __future__ import annotations

import math

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune.launch.evidence import EvidenceASHA, kept_by_score, kept_on_evidence
from tune.launch.halving import BatchHalving


def test_a_trial_whose_interval_reaches_the_cutoff_goes_on_and_one_below_it_stops():
    scores = {1: 0.20, 2: 0.18, 3: 0.15, 4: 0.10}  # by score 1 and 2 go on: the cutoff is 0.18
    highs = {1: 0.24, 2: 0.21, 3: 0.19, 4: 0.17}
    assert kept_by_score(scores, 2) == {1, 2}
    assert kept_on_evidence(scores, highs, 2) == {1, 2, 3}  # 0.19 reaches 0.18; 0.17 does not
    assert kept_on_evidence(scores, {**highs, 4: 0.18}, 2) == {1, 2, 3, 4}  # reaching it exactly is enough
    # no evidence (a missing or NaN upper end) keeps nobody beyond the point rule
    assert kept_on_evidence(scores, {3: math.nan}, 2) == {1, 2}
    # a NaN score is worst and its cutoff never lets a NaN upper end through
    assert kept_on_evidence({1: math.nan, 2: math.nan}, {1: math.nan, 2: math.nan}, 2) == {1}


def _trial(number: int) -> Trial:
    return Trial("__fake", config={}, experiment_tag=f"{number}_x=1", stub=True)


@pytest.mark.parametrize("stop_on, stopped", [("score", {3, 4}), ("interval", {4})])
def test_batch_halving_decides_a_rung_on_the_interval(stop_on, stopped):
    halving = BatchHalving(metric="score", max_t=4, grace_period=1, reduction_factor=2, batch=4, num_samples=4,
                           max_concurrent=4, stop_on=stop_on)
    trials = {n: _trial(n) for n in range(1, 5)}
    for trial in trials.values():
        halving.on_trial_add(None, trial)
    results = {1: (0.20, 0.24), 2: (0.18, 0.21), 3: (0.15, 0.19), 4: (0.10, 0.17)}
    actions = {n: halving.on_trial_result(None, trials[n], {"epoch": 1, "score": s, "objective_high": h})
               for n, (s, h) in results.items()}
    # the first three wait at the rung for the batch; the last one's result decides it
    assert [actions[n] for n in (1, 2, 3)] == [TrialScheduler.PAUSE] * 3
    assert actions[4] == (TrialScheduler.STOP if 4 in stopped else TrialScheduler.CONTINUE)
    assert {n for n, d in halving._decided[1].items() if d == "stop"} == stopped
    # the upper ends are part of the state a resume restores, so the decision is taken again the same way
    again = BatchHalving(metric="score", max_t=4, grace_period=1, reduction_factor=2, batch=4, num_samples=4,
                         max_concurrent=4, stop_on=stop_on)
    state = halving.get_state()
    state["decided"] = {}
    again.set_state(state)
    assert again._decide(1, 1) and again._decided == halving._decided


def _asha(kind):
    return kind(time_attr="epoch", metric="score", mode="max", max_t=4, grace_period=1, reduction_factor=2)


def test_asha_on_evidence_spares_a_trial_below_the_cutoff_only_while_its_interval_reaches_it():
    point, evidence = _asha(ASHAScheduler), _asha(EvidenceASHA)
    first, near, far = _trial(1), _trial(2), _trial(3)
    for asha in (point, evidence):
        for trial in (first, near, far):
            asha.on_trial_add(None, trial)
        # the first result at the rung sets the cutoff (the median of one score: 0.20)
        assert asha.on_trial_result(None, first, {"epoch": 1, "score": 0.20, "objective_high": 0.25}) == "CONTINUE"
    near_result = {"epoch": 1, "score": 0.18, "objective_high": 0.21}  # below 0.20, interval reaches it
    assert point.on_trial_result(None, near, near_result) == TrialScheduler.STOP
    assert evidence.on_trial_result(None, near, near_result) == TrialScheduler.CONTINUE
    # the cutoff is now the median of 0.20 and 0.18: 0.19; an upper end of 0.185 lies below it
    far_result = {"epoch": 1, "score": 0.12, "objective_high": 0.185}
    assert evidence.on_trial_result(None, far, far_result) == TrialScheduler.STOP
    assert evidence.spared == 1 and evidence._num_stopped == 1
    # the first result at the next rung passes (nothing recorded there yet); the last epoch ends the trial
    assert evidence.on_trial_result(None, near, {"epoch": 2, "score": 0.0, "objective_high": 0.0}) == "CONTINUE"
    assert evidence.on_trial_result(None, near, {"epoch": 4, "score": 0.3, "objective_high": 0.3}) == "STOP"


def test_asha_on_evidence_maximises_only():
    with pytest.raises(ValueError, match="maximises"):
        EvidenceASHA(time_attr="epoch", metric="score", mode="min", max_t=4)


@pytest.mark.parametrize("name, stop_on, kind", [
    ("asha", None, EvidenceASHA), ("asha", "score", ASHAScheduler),
    ("halving", None, BatchHalving), ("halving", "score", BatchHalving)])
def test_the_sweep_stops_on_the_interval_unless_told_otherwise(name, stop_on, kind, tmp_path):
    from tune.config import SweepConfig
    from tune.launch.sweep import _scheduling, describe_scheduler
    from tune.run.folder import RunFolder

    scheduler = {"name": name} if stop_on is None else {"name": name, "stop_on": stop_on}
    cfg = SweepConfig.model_validate({"data": {"path": "x"}, "scheduler": scheduler, "training": {"epochs": 4},
                                      "storage": str(tmp_path), "name": "s"})
    built = _scheduling(cfg, RunFolder.create(cfg.storage, cfg.name))[1]
    assert type(built) is kind
    if kind is BatchHalving:
        assert built.stop_on == (stop_on or "interval")
    assert describe_scheduler(cfg).endswith(", stop on interval)") == (stop_on is None)


def test_a_halving_scheduler_pickled_before_stop_on_keeps_the_point_rule():
    import pickle

    halving = BatchHalving(metric="score", max_t=4, grace_period=1, reduction_factor=2, batch=4, num_samples=4,
                           max_concurrent=4, stop_on="interval")
    state = dict(halving.__dict__)
    for name in ("stop_on", "_high_attr", "_highs"):  # what a tuner.pkl from before them holds
        del state[name]
    old = BatchHalving.__new__(BatchHalving)
    old.__dict__.update(state)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.stop_on == "score" and restored._highs == {} and restored._high_attr == "objective_high"
    trials = {n: _trial(n) for n in range(1, 5)}
    for n, score in zip(trials, (0.20, 0.18, 0.15, 0.10), strict=True):
        restored.on_trial_add(None, trials[n])
        restored.on_trial_result(None, trials[n], {"epoch": 1, "score": score, "objective_high": 0.5})
    assert {n for n, d in restored._decided[1].items() if d == "stop"} == {3, 4}
