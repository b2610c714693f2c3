"""``export --pick``: the trial chosen by what it costs to run, from ranking rows."""

from __future__ import annotations

import math

import pytest

from trainables.errors import BoxtuneError
from tune.ship.pick import Pick, parse_pick, pick_row

NAN = math.nan


def _rows(*specs):
    """(trial, AP, latency_ms, distinguishable) per row, best first."""
    return [{"rank": i, "trial": t, "AP": ap, "best_epoch": 3, "latency_ms": ms, "distinguishable": d}
            for i, (t, ap, ms, d) in enumerate(specs, 1)]


# the leader at 120 ms; b and c cannot be told apart from it, d can
ROWS = _rows(("a", 0.40, 120.0, False), ("b", 0.39, 60.0, False), ("c", 0.38, 45.0, False), ("d", 0.30, 20.0, True))


def test_fastest_tied_is_the_fastest_trial_the_best_does_not_beat():
    trial, meta = pick_row(ROWS, Pick("fastest-tied"), run="r")
    assert trial == "c" and meta["tied_with_best"] == ["a", "b", "c"]
    assert meta["reason"] == ("the fastest of the 3 trials not distinguishable from the best (a, AP 0.4000, 120.0 ms): "
                              "45.0 ms, AP 0.3800")
    # d is faster still, but told apart from the best: never chosen by this rule
    assert pick_row(_rows(("a", 0.4, 120.0, False), ("d", 0.3, 20.0, True)), Pick("fastest-tied"), run="r")[0] == "a"


def test_equal_latencies_go_to_the_better_ranked_trial():
    rows = _rows(("a", 0.40, 50.0, False), ("b", 0.39, 50.0, False))
    assert pick_row(rows, Pick("fastest-tied"), run="r")[0] == "a"


def test_max_latency_is_the_best_ranked_trial_within_the_limit():
    trial, meta = pick_row(ROWS, parse_pick("max-latency=50"), run="r")
    assert trial == "c" and meta["max_latency_ms"] == 50.0
    assert meta["reason"] == "the most accurate of the 2 trials within 50 ms: 45.0 ms, AP 0.3800, rank 3"
    assert pick_row(ROWS, parse_pick("max-latency=120"), run="r")[0] == "a"  # at the limit counts
    with pytest.raises(BoxtuneError, match=r"^--pick max-latency=10: no trial runs within 10 ms; the fastest is "
                                           r"trial d at 20.0 ms$"):
        pick_row(ROWS, parse_pick("max-latency=10"), run="r")


def test_a_confirmed_config_ships_its_seed_closest_to_the_mean():
    rows = _rows(("a", 0.40, 120.0, False), ("c", 0.38, 45.0, False))
    rows[1]["ship"] = "c_seed2"
    assert pick_row(rows, Pick("fastest-tied"), run="r")[0] == "c_seed2"


def test_without_intervals_or_latencies_the_rule_is_refused_not_guessed():
    no_intervals = _rows(("a", 0.40, 120.0, None), ("b", 0.39, 60.0, None))
    with pytest.raises(BoxtuneError, match=r"^--pick fastest-tied: r's ranking has no intervals"):
        pick_row(no_intervals, Pick("fastest-tied"), run="r")
    assert pick_row(no_intervals, parse_pick("max-latency=100"), run="r")[0] == "b"  # needs no intervals
    unmeasured = [{k: v for k, v in r.items() if k != "latency_ms"} for r in ROWS]
    with pytest.raises(BoxtuneError, match=r"^--pick: r has no latency figures: the sweep ran without cost.measure"):
        pick_row(unmeasured, Pick("fastest-tied"), run="r")


@pytest.mark.parametrize("text, message", [
    ("fastest", "expected one of fastest-tied, max-latency=MS"),
    ("max-latency", "expected one of fastest-tied, max-latency=MS"),
    ("max-latency=fast", "the latency limit should be a number of milliseconds > 0, got 'fast'"),
    ("max-latency=-5", "the latency limit should be a number of milliseconds > 0, got '-5'"),
    ("max-latency=nan", "got 'nan'"),
])
def test_an_unknown_rule_names_the_accepted_ones(text, message):
    with pytest.raises(BoxtuneError, match=rf"^--pick {text}: .*{message}"):
        parse_pick(text)
