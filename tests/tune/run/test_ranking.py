"""One ranking order everywhere: equal scores rank in creation order, never by Ray's random trial id.

Two trials that both score 0.0 must be named the same way by the live line, the ranking, the
export's pick and checkpoint retention: here each is asked about the same tie, with the trial
created first holding the id that sorts last.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from tune.launch.progress import ProgressTable
from tune.launch.retention import CheckpointRetention
from tune.run.ranking import creation_number, pick_trial, rank_order, rank_trials
from tune.run.storage import RunStorage
from tune.run.view import SweepView, TrialView

# (Ray's random trial id, Ray's experiment tag): the first created has the id that sorts last
FIRST, SECOND, THIRD = ("f7a2c9e1", "1_lr=0.01"), ("0b3d4e5f", "2_lr=0.02"), ("5c6d7e8f", "3_lr=0.03")


def _result(ap: float, epoch: int = 2) -> dict:
    return {"epoch": epoch, "AP": ap, "AR100": 0.0, "best_AP": ap, "best_AR100": 0.0, "best_score": ap,
            "score": ap, "best_epoch": epoch}


@pytest.mark.parametrize(("tag", "number"), [("1_lr=0.01", 1), ("12_batch_size=4,lr=0.1", 12), ("", 10**9),
                                             (None, 10**9), ("x_1", 10**9)])
def test_creation_number_from_the_experiment_tag(tag, number):
    assert creation_number(tag) == number


def test_rank_order_puts_scores_first_then_creation():
    keys = [rank_order(0.5, 3, "a"), rank_order(0.5, 1, "z"), rank_order(0.7, 9, "m"), rank_order(None, 0, "b"),
            rank_order(math.nan, 0, "c")]
    assert [k[-1] for k in sorted(keys)] == ["m", "z", "a", "b", "c"]


def test_the_ranking_and_the_export_pick_break_a_tie_by_creation(tmp_path):
    trials = [TrialView(tid, "TERMINATED", {"lr": 0.01 * n}, [_result(0.0, 1), _result(0.0, 2)], None, f"/r/{tid}",
                        f"dir_{tid}", creation_number(tag)) for n, (tid, tag) in enumerate([SECOND, THIRD, FIRST], 1)]
    view = SweepView(str(tmp_path), trials, 3, None)
    rows = rank_trials(view)
    assert [r["trial"] for r in rows] == [FIRST[0], SECOND[0], THIRD[0]]
    assert [r["number"] for r in rows] == [1, 2, 3]
    assert pick_trial(view).trial_id == FIRST[0]


def test_the_live_line_names_the_first_created_as_the_sweep_best(capsys):
    table = ProgressTable(max_epochs=2)
    for tid, tag in (SECOND, FIRST):  # the second created reports first
        table.on_trial_result(0, [], SimpleNamespace(trial_id=tid, experiment_tag=tag, config={}), _result(0.0))
    table.on_trial_complete(0, [], SimpleNamespace(trial_id=SECOND[0], experiment_tag=SECOND[1], config={}))
    assert f"(sweep best 0.000, {FIRST[0]})" in capsys.readouterr().out


def test_retention_keeps_the_first_created_of_equal_trials(tmp_path):
    storage = RunStorage(str(tmp_path), "run")
    retention = CheckpointRetention(storage, keep_trials=1)
    trials = {tid: SimpleNamespace(trial_id=tid, experiment_tag=tag, storage=SimpleNamespace(trial_dir_name=f"d_{tid}"))
              for tid, tag in (SECOND, FIRST)}
    for trial in trials.values():
        (tmp_path / "run" / trial.storage.trial_dir_name / "checkpoint_000001").mkdir(parents=True)
        retention.on_trial_result(0, [], trial, _result(0.0, 1))
    for trial in trials.values():
        retention.on_trial_error(0, [], trial)  # ended: outside the top 1 loses its checkpoints
    record = retention._folder.retention()
    assert list(record["deleted"]) == [SECOND[0]] and record["numbers"] == {SECOND[0]: 2, FIRST[0]: 1}
    assert (tmp_path / "run" / f"d_{FIRST[0]}" / "checkpoint_000001").is_dir()
