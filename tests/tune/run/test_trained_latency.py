"""The ranking's latency after the kept checkpoints were timed trained (``tune.run.ranking.latency_cells``):
the lower of the trained and the untrained figure, only at the trial's best epoch."""

from __future__ import annotations

import math

import pytest

from tune.run.ranking import latency_cells, rank_trials
from tune.run.view import SweepView, TrialView

UNTRAINED = {"latency_ms": 100.0, "latency_p10_ms": 90.0, "latency_p90_ms": 120.0, "onnx_latency_ms": 80.0,
             "params": 1e6, "file_mb": 4.0}


def _trial(tid: str, ap: float, number: int, *, best_epoch: int = 2) -> TrialView:
    history = [{"epoch": e, "AP": ap if e == best_epoch else ap / 2, "AR100": 0.0, **UNTRAINED} for e in (1, 2)]
    return TrialView(tid, "TERMINATED", {}, history, None, f"/r/{tid}", f"dir_{tid}", number)


def _timed(latency: float, onnx: float | None, epoch: int = 2) -> dict:
    return {"latency_ms": latency, "latency_p10_ms": latency - 5, "latency_p90_ms": latency + 5,
            "onnx_latency_ms": onnx, "epoch": epoch, "weights": "trained"}


@pytest.mark.parametrize("timed, expected", [
    # faster trained: its figures, and where from
    (_timed(40.0, 30.0), {"latency_ms": 40.0, "latency_p10_ms": 35.0, "latency_p90_ms": 45.0, "onnx_latency_ms": 30.0,
                          "latency_from": "trained", "trained_latency_ms": 40.0}),
    # slower trained (timing noise above the upper bound): the untrained figure stays, the trained one is shown
    (_timed(104.0, 85.0), {"latency_ms": 100.0, "latency_p10_ms": 90.0, "latency_p90_ms": 120.0,
                           "onnx_latency_ms": 80.0, "latency_from": "untrained", "trained_latency_ms": 104.0}),
    # ONNX Runtime failed on the trained graph: the untrained ONNX figure stays, not NaN
    (_timed(40.0, None), {"latency_ms": 40.0, "onnx_latency_ms": 80.0, "latency_from": "trained"}),
    # timed at another epoch than the best (a resumed trial's earlier best): not this checkpoint's
    (_timed(40.0, 30.0, epoch=1), {"latency_ms": 100.0, "onnx_latency_ms": 80.0, "latency_from": "untrained",
                                   "trained_latency_ms": math.nan}),
])
def test_the_ranking_takes_the_lower_figure_of_the_best_checkpoint(timed, expected):
    trial = _trial("a", 0.5, 1)
    view = SweepView("run", [trial], 1, None, trained_costs={"a": timed})
    cells = latency_cells(view, trial)
    assert cells["untrained_latency_ms"] == 100.0 and (cells["params"], cells["file_mb"]) == (1e6, 4.0)
    for key, value in expected.items():
        assert cells[key] == pytest.approx(value, nan_ok=True), key


def test_rows_say_which_figure_each_carries():
    trials = [_trial("a", 0.5, 1), _trial("b", 0.4, 2)]
    view = SweepView("run", trials, 2, None, trained_costs={"a": _timed(40.0, 30.0)})  # b's checkpoint was deleted
    rows = {r["trial"]: r for r in rank_trials(view, intervals=False)}
    assert (rows["a"]["latency_ms"], rows["a"]["latency_from"]) == (40.0, "trained")
    assert (rows["b"]["latency_ms"], rows["b"]["latency_from"]) == (100.0, "untrained")
    assert math.isnan(rows["b"]["trained_latency_ms"])
    # without cost figures (cost.measure off) no latency column at all
    plain = TrialView("c", "TERMINATED", {}, [{"epoch": 1, "AP": 0.1, "AR100": 0.0}], None, "/r/c", "dir_c", 1)
    (row,) = rank_trials(SweepView("run", [plain], 1, None), intervals=False)
    assert not {"latency_ms", "latency_from", "untrained_latency_ms"} & set(row)
