"""The ranking's text table: which columns it keeps within its width."""

from __future__ import annotations

from tune.results.report import format_ranking


def _row(rank: int, trial: str, ap: float, latency: float, lr: float, size: int | None) -> dict:
    return {"rank": rank, "trial": trial, "status": "TERMINATED", "AP": ap, "AR100": ap + 0.1, "best_epoch": 2,
            "epochs": 2, "score": ap, "front": rank == 1, "latency_ms": latency, "latency_p10_ms": latency - 3,
            "latency_p90_ms": latency + 3, "params": 2.26e6 if size is None else 1.9e7,
            "file_mb": 9.35 if size is None else 76.1, "lr": lr, "image_size": size}


def test_the_hyperparameters_come_before_the_cost_figures_spread_and_sizes():
    rows = [_row(1, "a1", 0.61, 79.3, 0.0144, None), _row(2, "b2", 0.40, 140.8, 0.0111, 160)]
    lines = format_ranking(rows, wide=False).splitlines()
    header = lines[0].split()
    # latency_ms is a core column beside front; lr and image_size come next, then the spread, and the
    # table, cut to 120 columns from its end, drops latency_p90_ms, params and file_mb first
    assert header == ["rank", "trial", "status", "AP", "AR100", "epoch", "latency_ms", "front", "lr", "image_size",
                      "latency_p10_ms"]
    assert lines[2].split() == ["2", "b2", "TERMINATED", "0.4000", "0.5000", "2/2", "140.8", "dominated", "0.0111",
                                "160", "137.8"]
    assert lines[-1] == "(more columns: --wide)"
    wide = format_ranking(rows, wide=True).splitlines()[0].split()
    assert {"latency_p90_ms", "params", "file_mb"} <= set(wide)
