"""The ranking of a confirmed sweep (``tune.run.confirmation``): the mean over seeds ranks, the
spread sits beside it, and the trial that ships is the seed closest to the mean, never the best seed.

Views are built by hand, as ``load_sweep`` hands them out, with the seeds' best AP chosen so that the
single-seed leader is not the best mean.
"""

from __future__ import annotations

import statistics

import pytest

from tune.config import SweepConfig
from tune.run.confirmation import CONFIRM_OF, CONFIRM_SEED, confirm_seeds, confirm_top, summarise_seeds
from tune.run.ranking import pick_trial, rank_trials
from tune.run.view import SweepView, TrialView

# search trial -> its own best AP, then its confirmation seeds' (seeds 1 and 2)
LUCKY = ("lucky", 0.30, (0.10, 0.11))  # the single-seed leader, whose mean is 0.17
STEADY = ("steady", 0.28, (0.22, 0.25))  # mean 0.25, closest seed: seed 2 (0.25), not the best (0.28)
PLAIN = ("plain", 0.20, ())  # not confirmed


def _history(ap: float) -> list[dict]:
    return [{"epoch": 1, "AP": ap / 2, "AR100": 0.0, "score": ap / 2}, {"epoch": 2, "AP": ap, "AR100": 0.0, "score": ap}]


def _view(*configs) -> SweepView:
    cfg = SweepConfig.model_validate({"data": {"path": "x"}, "training": {"epochs": 2, "seed": 7},
                                      "search": {"num_trials": 3, "confirm": {"top": 2, "seeds": 2}}})
    trials, seeded = [], []
    for number, (name, ap, seeds) in enumerate(configs, 1):
        trials.append(TrialView(name, "TERMINATED", {"lr": 0.01 * number}, _history(ap), None, "", name, number))
        for i, seed_ap in enumerate(seeds):
            seed = confirm_seeds(7, 2)[i]
            seeded.append(TrialView(f"{name}-{seed}", "TERMINATED", {CONFIRM_OF: name, CONFIRM_SEED: seed},
                                    _history(seed_ap), None, "", f"{name}-{seed}", len(seeded) + 1))
    view = SweepView("run", trials, 3, None, config=cfg)
    view.confirm = SweepView("run/confirm", seeded, 4, None, config=cfg)
    return view


def test_confirmed_configs_rank_by_their_mean_with_the_spread_beside_it():
    rows = rank_trials(_view(LUCKY, STEADY, PLAIN), intervals=False)
    assert [r["trial"] for r in rows] == ["steady", "lucky", "plain"]
    steady, lucky, plain = rows
    assert steady["seeds"] == 3 and steady["mean"] == pytest.approx(0.25)
    assert steady["seed_sd"] == pytest.approx(statistics.stdev([0.28, 0.22, 0.25]))
    assert (steady["seed_min"], steady["seed_max"]) == (pytest.approx(0.22), pytest.approx(0.28))
    assert lucky["mean"] == pytest.approx(0.17) and lucky["rank"] == 2
    assert steady["AP"] == pytest.approx(0.28)  # the metric columns stay the search trial's own
    assert plain["seeds"] == 1 and plain["ship"] == "plain"
    # the seed closest to the mean ships: seed 2 of steady (0.25), not its best seed (0.28, the search trial)
    assert steady["ship"] == "steady-9" and lucky["ship"] == "lucky-9"


def test_export_picks_the_best_mean_configs_seed_closest_to_the_mean():
    view = _view(LUCKY, STEADY, PLAIN)
    assert pick_trial(view).trial_id == "steady-9"
    assert pick_trial(view, "lucky-8").trial_id == "lucky-8"  # any seed by --trial


def test_a_config_whose_seeds_are_still_training_ranks_by_those_measured():
    view = _view(LUCKY, STEADY, PLAIN)
    view.confirm.trials[-1].history = []  # steady's seed 2 has not finished an epoch
    steady = next(r for r in rank_trials(view, intervals=False) if r["trial"] == "steady")
    assert steady["seeds"] == 2 and steady["mean"] == pytest.approx(0.25)


def test_the_top_configs_are_the_ranked_ones_with_a_finished_epoch_and_the_seeds_follow_the_sweeps():
    view = _view(PLAIN, LUCKY, STEADY)
    view.trials[0].history = []
    assert confirm_top(view, rank_trials(view, intervals=False)) == ["steady", "lucky"]
    assert confirm_seeds(7, 3) == [8, 9, 10]


@pytest.mark.parametrize(("measured", "ship"), [
    ([("a", 0.2, 0.2), ("b", 0.4, 0.4)], "a"),  # equally close: the search trial (first)
    ([("a", 0.5, 0.5), ("b", 0.1, 0.1), ("c", 0.3, 0.3)], "c"),
    ([("a", 0.5, 0.5), ("b", float("nan"), float("nan")), ("c", 0.3, 0.3)], "a"),  # an unmeasured seed is left out
])
def test_the_seed_closest_to_the_mean_ships(measured, ship):
    assert summarise_seeds(measured).ship == ship
