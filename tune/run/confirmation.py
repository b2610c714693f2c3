"""The confirmation stage's trials: what it trains, how a config's seeds are summed up, which one ships.

``search.confirm: {top: K, seeds: N}`` retrains the top K configs of the search's ranking with N
new training seeds each (``training.seed + 1`` .. ``training.seed + N``), as the trials of a second
Ray experiment in ``<run>/confirm`` (``tune.launch.confirm``): a grid over ``CONFIRM_OF`` (the
search trial whose sampled config it trains) and ``CONFIRM_SEED`` (its training seed), which is all
a confirmation trial's Ray config holds; its checkpoint holds its whole trial config.

A confirmed config's seeds are its search trial (its own seed counts as one) and its confirmation
trials with a finished epoch. Its summary: the mean, sample standard deviation, minimum and
maximum of the objective over those seeds, each seed's best epoch; configs rank by the mean score.
The checkpoint that ships for a config is the seed whose objective lies closest to the mean (ties:
the search trial, then the lower seed): a model typical of the config, whose own val number is
close to the one the ranking reports. The best seed would bring back the selection bias the mean
removes: its number is the luckiest of N + 1 draws.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from tune.run.front import eligible

__all__ = ["CONFIRM_OF", "CONFIRM_SEED", "CONFIRM_COLUMNS", "SeedSummary", "confirm_seeds", "confirm_top",
           "config_of", "trial_sample", "seed_members", "summarise_seeds"]

CONFIRM_OF = "confirm_of"  # in a confirmation trial's config: the search trial whose config it trains
CONFIRM_SEED = "confirm_seed"  # in a confirmation trial's config: its training seed (training.seed)
# the ranking's columns for a config's seeds (NaN, None or 1 seed for a config that was not confirmed)
CONFIRM_COLUMNS = ("seeds", "mean", "seed_sd", "seed_min", "seed_max", "ship")


def confirm_seeds(training_seed: int, seeds: int) -> list[int]:
    """The new training seeds: the ``seeds`` integers after the sweep's own ``training.seed``."""
    return [training_seed + i for i in range(1, seeds + 1)]


def confirm_top(view, rows: list[dict[str, Any]]) -> list[str]:
    """The search trials the stage retrains: the top ``search.confirm.top`` ranked ones with a finished
    epoch, within ``search.constraints`` (``tune.run.front``)."""
    return [row["trial"] for row in rows
            if row["best_epoch"] > 0 and eligible(row)][:view.config.search.confirm.top]


def config_of(view, trial_id: str) -> str:
    """The search trial whose config ``trial_id`` trained: itself, or the one a confirmation trial retrains."""
    trial = view.trial(trial_id)
    return str(trial.config.get(CONFIRM_OF, trial_id))


def trial_sample(view, trial_id: str) -> tuple[dict[str, Any], int]:
    """(the sampled config, the training seed) a trial trained with: a search trial's own config and
    ``training.seed``, or a confirmation trial's search trial's config and its own seed."""
    trial = view.trial(trial_id)
    if CONFIRM_OF not in trial.config:
        return dict(trial.config), view.config.training.seed
    return dict(view.trial(trial.config[CONFIRM_OF]).config), int(trial.config[CONFIRM_SEED])


def seed_members(view, trial_id: str) -> list[tuple[Any, Any, int]]:
    """(the view that holds it, TrialView, training seed) for search trial ``trial_id`` and each of its
    confirmation trials, in seed order; the search trial first."""
    own = (view, view.trial(trial_id), view.config.training.seed if view.config is not None else 0)
    confirm = view.confirm.trials if view.confirm is not None else []
    others = [(view.confirm, t, int(t.config[CONFIRM_SEED])) for t in confirm if t.config.get(CONFIRM_OF) == trial_id]
    return [own, *sorted(others, key=lambda m: m[2])]


@dataclass(frozen=True)
class SeedSummary:
    """A confirmed config over its seeds with a finished epoch."""

    seeds: int  # seeds measured, the search trial's included
    mean: float  # mean objective
    mean_score: float  # mean score (objective with the AR100 tiebreak): what ranks
    sd: float  # sample standard deviation of the objective; NaN for one seed
    low: float  # the worst seed's objective
    high: float  # the best seed's
    ship: str  # the trial whose checkpoint ships: its objective is closest to the mean

    def columns(self) -> dict[str, Any]:
        """The ranking's ``CONFIRM_COLUMNS`` for this config."""
        return dict(zip(CONFIRM_COLUMNS, (self.seeds, self.mean, self.sd, self.low, self.high, self.ship), strict=True))


def summarise_seeds(measured: list[tuple[str, float, float]]) -> SeedSummary | None:
    """The summary of (trial id, objective, score) per seed, the search trial first, then by seed;
    None when no seed has a finished epoch."""
    measured = [m for m in measured if not (math.isnan(m[1]) or math.isnan(m[2]))]
    if not measured:
        return None
    values = [m[1] for m in measured]
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    # the first in order among the closest (to 1e-9, below the objective's 6 decimals): the search
    # trial, then the lowest seed
    ship = min(range(len(measured)), key=lambda i: (round(abs(values[i] - mean), 9), i))
    return SeedSummary(len(measured), mean, statistics.fmean(m[2] for m in measured), sd, min(values), max(values),
                       measured[ship][0])
