"""Hyperparameter importance only when it means something: 8 finished trials or more, seeded fANOVA."""

from __future__ import annotations

import math
import random

import pytest

from tune.results.report import MIN_TRIALS_FOR_IMPORTANCE, Importances, format_ranking, param_importances
from tune.run.ranking import rank_trials
from tune.run.view import SweepView, TrialView


def _view(n: int, tmp_path) -> SweepView:
    """``n`` finished trials whose AP grows with log lr and depends on nothing else."""
    rng = random.Random(0)
    trials = []
    for i in range(n):
        lr = 10 ** rng.uniform(-4, -1)
        optimizer = rng.choice(["sgd", "adam"])
        config = {"lr": lr, "hflip_p": rng.random(), "optimizer": optimizer}
        if optimizer == "sgd":
            config["momentum"] = rng.uniform(0.8, 0.95)  # conditional: only under sgd
        ap = 0.1 + 0.1 * (math.log10(lr) + 4)
        history = [{"epoch": 1, "AP": ap / 2, "AR100": ap}, {"epoch": 2, "AP": ap, "AR100": ap + 0.1}]
        trials.append(TrialView(f"t{i:02d}", "TERMINATED", config, history, None, f"/runs/s/t{i:02d}"))
    run = tmp_path / "s"
    run.mkdir(exist_ok=True)
    (run / "sweep.yaml").write_text(f"search:\n  num_trials: {n}\n")
    return SweepView(str(run), trials, n, None)


def test_too_few_trials_say_so_instead_of_numbers(tmp_path):
    view = _view(MIN_TRIALS_FOR_IMPORTANCE - 1, tmp_path)
    importances = param_importances(view)
    assert isinstance(importances, Importances) and dict(importances) == {} and importances.finished == 7
    text = format_ranking(rank_trials(view), importances=importances)
    assert "hyperparameter importance: too few trials (7 finished; it needs at least 8)" in text
    assert "0." not in text.split("hyperparameter importance")[1]  # no numbers printed for importance


@pytest.mark.parametrize("n", [8, 16])
def test_enough_trials_give_seeded_fanova_importances(tmp_path, n):
    view = _view(n, tmp_path)
    first, second = param_importances(view), param_importances(view)
    assert dict(first) == dict(second)  # seeded: two reports agree, to the last digit
    assert set(first) == {"lr", "hflip_p", "optimizer"} and sum(first.values()) == pytest.approx(1.0)
    assert max(first, key=first.get) == "lr" and first["lr"] > 0.5  # AP depends on lr alone
    assert first.left_out == ["momentum"]  # conditional: fANOVA needs it in every trial
    text = format_ranking(rank_trials(view), importances=first)
    assert f"Optuna fANOVA, seed 0, {n} finished trials" in text
    assert "left out (conditional, not in every trial): momentum" in text


def _space_view(space, n: int, tmp_path) -> SweepView:
    """``n`` finished trials sampled by a built-in space, under the names it samples (``lr_sgd``,
    ``lr_adam``, ...) as a sweep's trials hold them; AP grows with log lr whatever the optimiser."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = []
    for i in range(n):
        trial = study.ask()
        constants = space(trial) or {}
        config = {**trial.params, **constants}
        lr = config.get("lr_sgd", config.get("lr_adam"))
        ap = 0.3 + 0.05 * math.log10(lr)
        history = [{"epoch": 1, "AP": ap, "AR100": ap}]
        trials.append(TrialView(f"t{i:02d}", "TERMINATED", config, history, None, f"/runs/s/t{i:02d}"))
    run = tmp_path / "s"
    run.mkdir(exist_ok=True)
    (run / "sweep.yaml").write_text(f"search:\n  num_trials: {n}\n")
    return SweepView(str(run), trials, n, None)


@pytest.mark.parametrize("name", ["quick", "default"])
def test_learning_rate_is_one_log_scale_hyperparameter_across_optimisers(tmp_path, name):
    import search_spaces

    view = _space_view(getattr(search_spaces, name), 16, tmp_path)
    names = {k for t in view.trials for k in t.config}
    assert {"lr_sgd", "lr_adam", "optimizer"} <= names  # the space's own names, each in some trials only
    importances = param_importances(view)
    assert "lr" in importances and not {"lr_sgd", "lr_adam"} & set(importances)
    assert not {"lr", "lr_sgd", "lr_adam"} & set(importances.left_out)
    assert sum(importances.values()) == pytest.approx(1.0)
    if name == "quick":  # AP follows lr alone: the learning rate and the optimiser that sets its range lead
        assert sorted(importances, key=importances.get)[-2:] in (["lr", "optimizer"], ["optimizer", "lr"])
    text = format_ranking(rank_trials(view), importances=importances)
    assert "\n  lr " in text and "lr_sgd" not in text.split("hyperparameter importance")[1]
