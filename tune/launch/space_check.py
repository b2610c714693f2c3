"""Every config a search space can produce, checked before Ray starts, with the builders a trial runs.

A trial rejects a config in three places: the schema (``TrialConfig``), the freeze depth, and the
builders it runs before its first step (``build_optimizer``, ``build_scheduler``,
``build_train_transforms``). Some of those checks depend on the run as well as on the sample: a
step schedule must act within ``training.epochs``, and one-cycle's warm-up needs
``pct_start * epochs * iterations per epoch > 1``, where iterations per epoch is
``ceil(train images / batch_size)`` (``len`` of the trial's DataLoader, which keeps the last,
short batch). So the check runs after the manifest is read, with the sweep's epochs and the train
split's size, and builds the optimiser on a dummy parameter instead of a model.

Which samples: a space's failures sit at the ends of its ranges (momentum 0 with Nesterov, the
shortest one-cycle warm-up at the largest batch), which random draws almost never hit. So every
value of every categorical and both ends of every numeric range are tried, each under the branch
that reaches it, once with every other parameter at its low end and once at its high end; then
``samples`` random draws for the combinations in between.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import torch

from search_spaces import suggest_hparams
from trainables.augment import build_train_transforms
from trainables.config import TrialConfig, format_validation_error
from trainables.errors import ConfigError
from trainables.freeze import validate_freeze_depth
from trainables.optim import build_optimizer, build_scheduler

__all__ = ["iterations_per_epoch", "check_trial_config", "check_sampled_space", "CornerSampler"]


def iterations_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps per epoch: ``len(DataLoader)`` with ``drop_last=False``, as the trial loop has it."""
    return math.ceil(n_train / batch_size)


def check_trial_config(merged: dict[str, Any], *, n_train: int) -> None:
    """Run what a trial runs before its first step on ``merged``; a rejection is a ConfigError naming the key."""
    try:
        cfg = TrialConfig.model_validate(merged)
    except Exception as err:  # pydantic ValidationError
        lines = format_validation_error(err, TrialConfig) if hasattr(err, "errors") else [str(err)]
        raise ConfigError("; ".join(lines)) from None
    hp = cfg.hparams
    validate_freeze_depth(cfg.model.architecture, hp.freeze_depth)
    # a weight and a bias: both of split_decay_groups' groups are non-empty, as in a real model
    dummy = [("weight", torch.nn.Parameter(torch.zeros(1, 1))), ("bias", torch.nn.Parameter(torch.zeros(1)))]
    optimizer = build_optimizer(dummy, hp)
    build_scheduler(optimizer, hp, epochs=cfg.training.epochs,
                    iters_per_epoch=iterations_per_epoch(n_train, hp.batch_size))
    build_train_transforms(hp)


def _corners(dist: optuna.distributions.BaseDistribution) -> list[Any]:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]  # Optuna has already moved high onto the step grid


class CornerSampler(optuna.samplers.BaseSampler):
    """Draws the corner ``pins[name]`` (an index into the distribution's corners) and, for every
    other parameter, its first corner (``mode`` "low") or its last ("high")."""

    def __init__(self) -> None:
        self.pins: dict[str, int] = {}
        self.mode = "low"

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        corners = _corners(param_distribution)
        index = self.pins.get(param_name, 0 if self.mode == "low" else -1)
        return corners[min(index, len(corners) - 1)]


def _corner_samples(space, study: optuna.Study, sampler: CornerSampler):
    """Yield (sampled hparams, trial) for every corner of every parameter, reached through its branch."""
    queue: list[tuple[dict[str, int], str]] = [({}, "low"), ({}, "high")]
    seen: set[tuple[str, str, int]] = set()
    while queue:
        sampler.pins, sampler.mode = queue.pop(0)
        trial = study.ask()
        yield suggest_hparams(space, trial), trial
        # the parameters in the order the space suggested them: pinning the ones before a parameter
        # takes the same branches again, so its other corners are reached where it lives
        prefix: dict[str, int] = {}
        for name, dist in trial.distributions.items():
            corners = _corners(dist)
            for i in range(len(corners)):
                if (name, repr(dist), i) not in seen:
                    seen.add((name, repr(dist), i))
                    queue += [({**prefix, name: i}, "low"), ({**prefix, name: i}, "high")]
            value = trial.params[name]
            prefix[name] = next((i for i, c in enumerate(corners) if c == value), 0)


def check_sampled_space(space, base_for_trial, *, n_train: int, samples: int, seed: int) -> int:
    """Check every corner of ``space`` and ``samples`` random draws; return how many configs were checked.

    ``base_for_trial(sampled)`` is the merged trial config of a sample. The first rejected sample
    raises ConfigError with the sample and the trainable's reason, which names the key.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = CornerSampler()
    corner_study = optuna.create_study(sampler=sampler)
    random_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))

    def random_samples():
        for _ in range(samples):
            trial = random_study.ask()
            yield suggest_hparams(space, trial), trial

    checked = 0
    for study, draws in ((corner_study, _corner_samples(space, corner_study, sampler)), (random_study, random_samples())):
        for sampled, trial in draws:
            try:
                check_trial_config(base_for_trial(sampled), n_train=n_train)
            except ConfigError as err:
                raise ConfigError(f"search.space: sampled {sampled} which the trainable rejects: {err}") from None
            study.tell(trial, 0.0)
            checked += 1
    return checked
