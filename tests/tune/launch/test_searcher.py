"""The searcher's study across a kill (``tune/launch/searcher.py``), driven as Ray drives it, without trials.

Ray pickles the searcher into ``tuner.pkl`` when the experiment starts, saves it with each
experiment snapshot (``save``) and, on ``boxtune resume``, unpickles ``tuner.pkl`` and restores the
last snapshot into it (``restore``); the journal is written as the search goes. Here the snapshot
is taken with trials 1 and 2 asked and trial 1 told; then trial 3 is asked and trial 2 told, and
the driver dies. After the resume:

* trial 3, which no Ray trial is any more, is told FAIL with ``forgotten``; nothing stays RUNNING;
* Ray re-runs trial 2 from its checkpoint and tells its end again: the study keeps the first;
* the next trial asked gets creation number 3 and the config the lost trial 3 had, and the one
  after it what a searcher never killed asks fourth: the same sweep, as if nothing happened.

Both for sampled trials and for the known-good first configs a built-in space enqueues.
"""

from __future__ import annotations

import pickle

import pytest
from optuna.trial import TrialState
from shared_run import load_study, study_by_ray_trial

from trainables.objective import BEST_SCORE
from tune.launch.searcher import FORGOTTEN_REASON, StudySearch
from tune.launch.sweep import make_sampler
from tune.run.folder import RunFolder
from tune.run.study import CREATION_NUMBER, FORGOTTEN, RAY_TRIAL_ID


def _space(trial):  # module level: Ray pickles the searcher, space included
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("optimizer", ["sgd", "adam"])


def _searcher(run, first: list[dict]) -> StudySearch:
    return StudySearch(space=_space, metric=BEST_SCORE, mode="max", sampler=make_sampler("tpe", 0),
                       journal=RunFolder.at(str(run)).journal(), study_name=run.name, points_to_evaluate=first)


def _result(x: float, epoch: int) -> dict:
    return {BEST_SCORE: x * epoch, "training_iteration": epoch}


@pytest.mark.parametrize("first", [[], [{"x": 0.1, "optimizer": "sgd"}, {"x": 0.2, "optimizer": "adam"},
                                        {"x": 0.3, "optimizer": "sgd"}]], ids=["sampled", "first configs"])
def test_a_killed_search_resumes_as_if_nothing_happened(tmp_path, first):
    # the same sweep never killed: trials 1 to 4 as Ray asks for them
    whole = _searcher(tmp_path / "whole", first)
    asked = [whole.suggest(f"w{n}") for n in (1, 2, 3, 4)]
    assert first == asked[: len(first)]

    run = tmp_path / "killed"
    searcher = _searcher(run, first)
    tuner_pkl = pickle.dumps(searcher)  # as the experiment starts
    one, two = searcher.suggest("t1"), searcher.suggest("t2")
    assert [one, two] == asked[:2]
    searcher.on_trial_result("t1", _result(one["x"], 1))
    searcher.on_trial_complete("t1", result=_result(one["x"], 1))
    searcher.on_trial_result("t2", _result(two["x"], 1))
    snapshot = str(tmp_path / "searcher-state.pkl")
    searcher.save(snapshot)  # Ray's last experiment snapshot
    lost = searcher.suggest("t3")
    assert lost == asked[2]
    searcher.on_trial_complete("t2", result=_result(two["x"], 1))  # told, after the snapshot
    del searcher  # SIGKILL

    resumed = pickle.loads(tuner_pkl)
    resumed.restore(snapshot)
    trials = load_study(run).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert trials[2].user_attrs == {RAY_TRIAL_ID: "t3", CREATION_NUMBER: 3, FORGOTTEN: FORGOTTEN_REASON}

    # Ray restored trial 2 as running at the snapshot: it re-runs epoch 2 from its checkpoint and ends again
    resumed.on_trial_result("t2", _result(two["x"], 2))
    resumed.on_trial_complete("t2", result=_result(two["x"], 2))
    assert load_study(run).trials[1].value == two["x"] * 1 and load_study(run).trials[1].intermediate_values == {
        1: two["x"]}
    # Ray asks again for creation number 3, with a new trial id, then goes on
    again, fourth = resumed.suggest("t4"), resumed.suggest("t5")
    assert [again, fourth] == asked[2:4]
    for trial_id, config in (("t4", again), ("t5", fourth)):
        resumed.on_trial_result(trial_id, _result(config["x"], 1))
        resumed.on_trial_complete(trial_id, result=_result(config["x"], 1))

    by_id, forgotten = study_by_ray_trial(run)
    assert sorted(by_id) == ["t1", "t2", "t4", "t5"] and [t.number for t in forgotten] == [2]
    assert {trial_id: t.user_attrs[CREATION_NUMBER] for trial_id, t in by_id.items()} == {
        "t1": 1, "t2": 2, "t4": 3, "t5": 4}
    assert by_id["t4"].params == forgotten[0].params == asked[2]
    assert all(t.state == TrialState.COMPLETE for t in by_id.values())

