"""Search spaces: branches, sampled configs the trial accepts, declarative parsing, resolution."""

from __future__ import annotations

import pickle
import sys
import textwrap

import optuna
import pytest
from optuna.trial import FixedTrial
from torch import nn

from search_spaces import (
    BUILTIN_SPACES,
    default,
    first_trials,
    make_space,
    parse_space,
    quick,
    resolve_space,
    seed,
    suggest_hparams,
    to_hparams,
)
from trainables.augment import build_train_transforms
from trainables.config import HParams, TrialConfig
from trainables.errors import ConfigError
from trainables.optim import build_optimizer, build_scheduler

optuna.logging.set_verbosity(optuna.logging.WARNING)

EPOCHS = 10
_DEFAULT_BASE = {
    "optimizer", "weight_decay", "decay_norm_and_bias", "schedule", "freeze_depth", "batch_size",
    "hflip_p", "vflip_p", "jitter_p", "crop_p", "zoom_out_p", "scale_jitter_p",
}  # fmt: skip
_OPTIMIZER_KEYS = {
    "sgd": {"momentum", "nesterov"},
    "adam": {"beta1", "beta2", "eps"},
    "adamw": {"beta1", "beta2", "eps"},
}
_SCHEDULE_KEYS = {
    "constant": {"warmup_iters"},
    "step": {"step_size", "gamma", "warmup_iters"},
    "multistep": {"milestones", "gamma", "warmup_iters"},
    "exponential": {"gamma", "warmup_iters"},
    "cosine": {"eta_min_factor", "warmup_iters"},
    "onecycle": {"pct_start", "div_factor", "final_div_factor"},
}
# each optimiser's learning rate is searched under its own name (to_hparams makes it HParams.lr)
_LR_NAME = {"sgd": "lr_sgd", "adam": "lr_adam", "adamw": "lr_adam"}
# one value for every parameter any branch of `default` can suggest
_DEFAULT_VALUES = dict(
    lr_sgd=0.01, lr_adam=0.001, weight_decay=1e-4, decay_norm_and_bias=False, momentum=0.9, nesterov=True, beta1=0.9,
    beta2=0.999, eps=1e-8, step_size=3, gamma=0.5, eta_min_factor=0.01, pct_start=0.3, div_factor=10.0,
    final_div_factor=100.0, warmup_iters=100, freeze_depth=3, batch_size=4, hflip_p=0.5, vflip_p=0.0,
    brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, crop_p=0.5, zoom_out_max=2.0, scale_min=0.7,
    scale_max=1.5,
)  # fmt: skip


def _accepted(hparams: dict, *, epochs: int = EPOCHS, iters_per_epoch: int = 5) -> None:
    """The trial's own checks: the schema, the optimiser and schedule builders, the transforms."""
    hp = TrialConfig(hparams=hparams).hparams
    opt = build_optimizer(nn.Linear(2, 1).named_parameters(), hp)
    build_scheduler(opt, hp, epochs=epochs, iters_per_epoch=iters_per_epoch)
    build_train_transforms(hp)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", list(_SCHEDULE_KEYS))
@pytest.mark.parametrize("augment_on", [False, True])
def test_default_space_branches(optimizer, schedule, augment_on):
    p = 0.5 if augment_on else 0.0
    trial = FixedTrial(
        {
            **_DEFAULT_VALUES,
            "optimizer": optimizer,
            "schedule": schedule,
            "jitter_p": p,
            "zoom_out_p": p,
            "scale_jitter_p": p,
        }
    )
    hparams = suggest_hparams(default, trial)
    expected = _DEFAULT_BASE | {_LR_NAME[optimizer]} | _OPTIMIZER_KEYS[optimizer] | _SCHEDULE_KEYS[schedule]
    if augment_on:
        expected |= {"brightness", "contrast", "saturation", "hue", "zoom_out_max", "scale_min", "scale_max"}
    assert set(hparams) == expected
    if schedule == "multistep":
        assert hparams["milestones"] == [7, 9]  # 2/3 and 8/9 of 10 epochs
    assert to_hparams(hparams)["lr"] == _DEFAULT_VALUES[_LR_NAME[optimizer]]
    _accepted(to_hparams(hparams))


@pytest.mark.parametrize(
    "optimizer, expected",
    [
        (
            "adam",
            dict(
                lr=0.005,
                beta1=0.9,
                beta2=0.999,
                eps=1e-8,
                weight_decay=5e-4,
                schedule="exponential",
                gamma=0.65,
            ),
        ),
        ("sgd", dict(lr=0.005, momentum=0.9, weight_decay=5e-4, schedule="step", step_size=3, gamma=0.1)),
    ],
)
def test_seed_space_is_two_recipes(optimizer, expected):
    hparams = suggest_hparams(seed, FixedTrial({"optimizer": optimizer}))
    assert hparams == {"optimizer": optimizer, **expected}
    _accepted(hparams)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_quick_space(optimizer):
    lr = 0.02 if optimizer == "sgd" else 0.001  # inside each optimiser's own range
    trial = FixedTrial({"optimizer": optimizer, _LR_NAME[optimizer]: lr, "hflip_p": 0.5, "freeze_depth": 2})
    hparams = to_hparams(suggest_hparams(quick, trial))
    assert hparams == {
        "optimizer": optimizer,
        "lr": lr,
        "hflip_p": 0.5,
        "freeze_depth": 2,
        "batch_size": 4,
        "warmup_iters": 20,
    }
    _accepted(hparams)


def _sample(space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest_hparams(space, trial))
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("name", BUILTIN_SPACES)
@pytest.mark.parametrize("max_freeze_depth", [8, 5])
@pytest.mark.parametrize("pretrained", [True, False])
def test_every_sampled_config_is_accepted(name, max_freeze_depth, pretrained):
    space = make_space(name, max_freeze_depth=max_freeze_depth, epochs=EPOCHS, pretrained=pretrained)
    samples = [to_hparams(s) for s in _sample(space, 200)]
    for hparams in samples:
        assert set(hparams) <= set(HParams.model_fields)
        assert hparams.get("freeze_depth", 0) <= max_freeze_depth
        _accepted(hparams)
    seen = {key: {h.get(key) for h in samples} for key in ("optimizer", "schedule", "freeze_depth")}
    if name == "default":  # the sample really covered every branch
        assert seen["optimizer"] == {"sgd", "adam", "adamw"}
        assert seen["schedule"] == set(_SCHEDULE_KEYS)
        # every depth from a trained detector; from random weights none deeper than 2
        assert seen["freeze_depth"] == set(range((max_freeze_depth if pretrained else 2) + 1))
    if name == "quick":
        assert seen["freeze_depth"] == ({0, 2, 5} if pretrained else {0, 1, 2})
        assert seen["optimizer"] == {"sgd", "adam"}
        # each optimiser stays inside the range it learns with
        assert all(0.01 <= h["lr"] <= 0.04 for h in samples if h["optimizer"] == "sgd")
        assert all(3e-4 <= h["lr"] <= 2e-3 for h in samples if h["optimizer"] == "adam")


@pytest.mark.parametrize("name", ["default", "quick"])
def test_each_optimiser_has_its_own_lr_parameter(name):
    # TPE models each name on its own: SGD's rates must never enter the density Adam's come from
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    space = make_space(name, max_freeze_depth=5, epochs=EPOCHS)
    for _ in range(30):
        trial = study.ask()
        sampled = suggest_hparams(space, trial)
        study.tell(trial, 1.0 if sampled["optimizer"] == "sgd" else 0.0)
    for t in study.trials:
        names = {k for k in t.params if k.startswith("lr")}
        assert names == {"lr_sgd" if t.params["optimizer"] == "sgd" else "lr_adam"}
    adam = [t.params["lr_adam"] for t in study.trials if "lr_adam" in t.params]
    sgd = [t.params["lr_sgd"] for t in study.trials if "lr_sgd" in t.params]
    assert adam and sgd and max(adam) <= {"default": 1e-3, "quick": 2e-3}[name] and min(sgd) >= 1e-3


@pytest.mark.parametrize("epochs, step_size", [(6, 3), (10, 5), (2, 1)])
def test_default_starts_from_the_seed_sgd_recipe(epochs, step_size):
    (point,) = first_trials("default", epochs=epochs)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(point)
    hparams = to_hparams(suggest_hparams(make_space("default", max_freeze_depth=8, epochs=epochs), study.ask()))
    # the `seed` space's SGD recipe, its step at half the run, nothing else on but the flip
    seed_sgd = to_hparams(suggest_hparams(make_space("seed", max_freeze_depth=8), FixedTrial({"optimizer": "sgd"})))
    assert hparams == {**seed_sgd, "optimizer": "sgd", "step_size": step_size, "nesterov": False,
                       "decay_norm_and_bias": True, "warmup_iters": 0, "freeze_depth": 0, "batch_size": 2,
                       "hflip_p": 0.5, "vflip_p": 0.0, "jitter_p": 0.0, "crop_p": 0.0, "zoom_out_p": 0.0,
                       "scale_jitter_p": 0.0}
    _accepted(hparams, epochs=epochs)
    assert first_trials("default", epochs=1) == [] and first_trials("quick", epochs=6) == []


def test_to_hparams_renames_and_refuses_two_names():
    assert to_hparams({"optimizer": "sgd", "lr_sgd": 0.02, "batch_size": 4}) == {
        "optimizer": "sgd", "lr": 0.02, "batch_size": 4}
    assert to_hparams({"lr": 0.01}) == {"lr": 0.01}
    with pytest.raises(ConfigError, match="'lr_adam' and 'lr' both set 'lr'"):
        to_hparams({"lr": 0.01, "lr_adam": 0.001})


@pytest.mark.parametrize("epochs", [1, 2, 4])
def test_short_runs_only_get_schedules_that_act(epochs):
    samples = [to_hparams(s) for s in _sample(make_space("default", max_freeze_depth=3, epochs=epochs), 100)]
    schedules = {h["schedule"] for h in samples}
    assert ("step" in schedules) == (epochs >= 2)
    for hparams in samples:
        _accepted(hparams, epochs=epochs, iters_per_epoch=50)


def test_make_space_rejects_what_cannot_work():
    with pytest.raises(ConfigError, match="epochs >= 4"):
        make_space("seed", max_freeze_depth=8, epochs=3)
    with pytest.raises(ConfigError, match="accepted: default, seed, quick"):
        make_space("fast", max_freeze_depth=8)


def test_spaces_pickle():
    values = {**_DEFAULT_VALUES, "optimizer": "sgd", "schedule": "cosine", "jitter_p": 0.0, "zoom_out_p": 0.0,
              "scale_jitter_p": 0.0, "lr": 0.001}  # fmt: skip
    for space in (
        make_space("default", max_freeze_depth=6, pretrained=True),
        parse_space({"lr": {"loguniform": [1e-4, 1e-2]}}),
    ):
        again = pickle.loads(pickle.dumps(space))
        assert suggest_hparams(again, FixedTrial(values)) == suggest_hparams(space, FixedTrial(values))


# --- declarative ---------------------------------------------------------------------------------

DECLARATIVE = {
    "optimizer": {"choice": ["sgd", "adam"]},
    "lr": {"loguniform": [1e-4, 1e-1]},
    "momentum": {"uniform": [0.8, 0.99], "when": {"optimizer": "sgd"}},
    "beta1": {"float": [0.8, 0.95, 0.05], "when": {"optimizer": ["adam"]}},
    "batch_size": 2,
    "freeze_depth": {"int": [0, 4]},
    "schedule": {"choice": ["constant", "step", "multistep"]},
    "step_size": {"int": [2, 5, 1], "when": {"schedule": "step"}},
    "milestones": {"value": [4, 7], "when": {"schedule": "multistep"}},
    "gamma": {"uniform": [0.1, 0.5], "when": {"schedule": ["step", "multistep"]}},
    "warmup_iters": {"int": [10, 1000], "log": True},
}


@pytest.mark.parametrize(
    "fixed, expected_extra",
    [
        ({"optimizer": "sgd", "schedule": "constant"}, {"momentum"}),
        ({"optimizer": "adam", "schedule": "step"}, {"beta1", "step_size", "gamma"}),
        ({"optimizer": "sgd", "schedule": "multistep"}, {"momentum", "milestones", "gamma"}),
    ],
)
def test_declarative_branches(fixed, expected_extra):
    space = parse_space(DECLARATIVE, max_freeze_depth=8, epochs=EPOCHS)
    values = {"lr": 0.01, "momentum": 0.9, "beta1": 0.85, "freeze_depth": 2, "step_size": 3, "gamma": 0.2,
              "warmup_iters": 100, **fixed}  # fmt: skip
    hparams = suggest_hparams(space, FixedTrial(values))
    assert (
        set(hparams)
        == {"optimizer", "lr", "batch_size", "freeze_depth", "schedule", "warmup_iters"} | expected_extra
    )
    assert hparams["batch_size"] == 2
    _accepted(hparams)


def test_declarative_samples_are_accepted():
    for hparams in _sample(parse_space(DECLARATIVE, max_freeze_depth=4, epochs=EPOCHS), 200):
        _accepted(hparams)
        if "beta1" in hparams:  # float with step 0.05
            assert min(abs(hparams["beta1"] - v) for v in (0.8, 0.85, 0.9, 0.95)) < 1e-9


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lrr": {"uniform": [0.1, 0.2]}}, "search_space.lrr: unknown hyperparameter (did you mean 'lr'?)"),
        ({"lr": {"unifrom": [0.1, 0.2]}}, "search_space.lr: unknown kind 'unifrom' (did you mean 'uniform'?)"),
        ({"lr": {"uniform": [0.1, 0.2], "int": [1, 2]}}, "search_space.lr: needs exactly one kind"),
        ({"lr": {"uniform": [0.2, 0.1]}}, "search_space.lr: uniform needs low < high"),
        ({"lr": {"loguniform": [0, 0.1]}}, "search_space.lr: a log-scale range needs low > 0"),
        ({"lr": {"uniform": [1e-3, 20]}}, "search_space.lr: 20 is not a valid lr"),
        ({"lr": {"uniform": "0.1..0.2"}}, "search_space.lr: uniform takes [low, high]"),
        ({"momentum": {"uniform": [0.8, 1.0]}}, "search_space.momentum: 1.0 is not a valid momentum"),
        ({"freeze_depth": {"uniform": [0, 3]}}, "search_space.freeze_depth: takes an integer"),
        ({"freeze_depth": {"int": [0, 9]}}, "freeze_depth: reaches 9, above this architecture's maximum 8"),
        ({"freeze_depth": {"int": [0, 5, 2]}}, "search_space.freeze_depth: step 2 must be > 0, without log, and divide"),
        ({"optimizer": {"choice": ["sgd", "adamx"]}}, "'adamx' is not a valid optimizer"),
        ({"optimizer": {"choice": []}}, "choice takes a non-empty list"),
        ({"nesterov": {"uniform": [0, 1]}}, "search_space.nesterov: takes one of fixed values (use choice)"),
        ({"optimizer": "adam", "momentum": 0.9}, "search_space.momentum: applies only to optimizer sgd"),
        ({"momentum": {"uniform": [0.8, 0.9], "when": {"lr": 0.1}}}, "when refers to 'lr', which is not an earlier key"),
        ({"lr": {"uniform": [0.1, 0.2]}, "momentum": {"uniform": [0.8, 0.9], "when": {"lr": 0.1}}},
         "when refers to 'lr', which is an earlier uniform, not a choice"),
        ({"optimizer": {"choice": ["sgd", "adam"]}, "momentum": {"uniform": [0.8, 0.9], "when": {"optimizer": "sdg"}}},
         "when optimizer in ['sdg'] never holds"),
        ({"schedule": {"choice": ["step", "cosine"]}, "step_size": {"int": [1, 3]}},
         "step_size: applies only to schedule step but can be sampled with schedule cosine"),
        ({"schedule": "step", "step_size": {"int": [1, 10]}}, "step_size: reaches 10, which never acts in a run of 10 epochs"),
        ({"schedule": "multistep", "milestones": [3, 12]}, "milestones: [12] never act in a run of 10 epochs"),
        ({"milestones": {"choice": [[3, 6]]}}, "a list cannot be a choice"),
        ({"schedule": {"choice": ["constant", "onecycle"]}, "warmup_iters": {"int": [0, 100]}},
         "warmup_iters: can be > 0 with schedule onecycle"),
        ({"lr": {"uniform": [0.1, 0.2], "log": "yes"}}, "log applies to int and float only"),
        ({"batch_size": {"choice": [2, 4], "log": True}}, "search_space.batch_size: log applies to int and float only"),
    ],
)  # fmt: skip
def test_bad_declarative_spaces(space, message):
    with pytest.raises(ConfigError) as err:
        parse_space(space, max_freeze_depth=8, epochs=EPOCHS)
    assert message in str(err.value)


def test_declarative_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        parse_space({"lrr": 0.1, "hflip_p": 2.0, "batch_size": {"int": [8, 2]}})
    lines = str(err.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "search_space.lrr",
        "search_space.hflip_p",
        "search_space.batch_size",
    ]


# --- registry ------------------------------------------------------------------------------------

USER_MODULE = "boxtune_test_user_spaces"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{USER_MODULE}.py").write_text(
        textwrap.dedent(
            """
            def narrow(trial):
                trial.suggest_float("lr", 1e-3, 1e-2, log=True)
                return {"batch_size": 4}

            def by_depth(*, max_freeze_depth, epochs=None):
                def space(trial):
                    trial.suggest_int("freeze_depth", 0, max_freeze_depth)
                    return {"warmup_iters": epochs}
                return space

            def by_start(*, max_freeze_depth, pretrained=False):
                def space(trial):
                    return {"freeze_depth": max_freeze_depth if pretrained else 0}
                return space

            def bad_factory(*, max_freeze_depth):
                return 3

            not_callable = 3
            """
        )
    )
    (tmp_path / "boxtune_test_broken_spaces.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (USER_MODULE, "boxtune_test_broken_spaces"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return USER_MODULE


def test_resolve_plain_function(user_module):
    space = resolve_space(f"{user_module}:narrow", max_freeze_depth=8)
    assert suggest_hparams(space, FixedTrial({"lr": 0.004})) == {"lr": 0.004, "batch_size": 4}


def test_resolve_factory_gets_depth_and_epochs(user_module):
    space = resolve_space(f"{user_module}:by_depth", max_freeze_depth=5, epochs=7)
    assert suggest_hparams(space, FixedTrial({"freeze_depth": 5})) == {"freeze_depth": 5, "warmup_iters": 7}
    samples = _sample(space, 50)
    assert max(h["freeze_depth"] for h in samples) == 5


def test_resolve_factory_gets_the_start(user_module):
    for pretrained, depth in ((True, 6), (False, 0)):
        space = resolve_space(f"{user_module}:by_start", max_freeze_depth=6, pretrained=pretrained)
        assert suggest_hparams(space, FixedTrial({})) == {"freeze_depth": depth}


@pytest.mark.parametrize("max_freeze_depth, pretrained, depths", [
    (8, False, {0, 1, 2}),  # random features: nothing deeper than the first stage frozen
    (8, True, {0, 2, 5}),  # a trained detector: up to the whole backbone body frozen
    (5, True, {0, 2, 5}),
    (3, True, {0, 2, 3}),
    (1, True, {0, 1}),
])
def test_quick_freeze_depths_follow_the_start(max_freeze_depth, pretrained, depths):
    space = resolve_space("quick", max_freeze_depth=max_freeze_depth, pretrained=pretrained)
    samples = _sample(space, 60)
    assert {h["freeze_depth"] for h in samples} == depths
    for hparams in samples:
        _accepted(to_hparams(hparams))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("boxtune_no_such_module:space", "search_space 'boxtune_no_such_module:space': cannot import"),
        ("boxtune_test_broken_spaces:space", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
        (f"{USER_MODULE}:missing", f"module '{USER_MODULE}' has no attribute 'missing'"),
        (f"{USER_MODULE}:not_callable", "'not_callable' is not callable"),
        (f"{USER_MODULE}:bad_factory", "the factory returned int, not a space"),
        (f"{USER_MODULE}:", "expected 'package.module:function'"),
        ("defualt", "unknown built-in (did you mean 'default'?); accepted: default, seed, quick"),
        (3, "expected a built-in name"),
    ],
)
def test_resolve_errors_name_the_spec(user_module, spec, message):
    with pytest.raises(ConfigError) as err:
        resolve_space(spec, max_freeze_depth=8)
    assert message in str(err.value)


def test_resolve_builtins_and_mappings():
    space = resolve_space("quick", max_freeze_depth=1)
    samples = _sample(space, 40)
    assert {h["freeze_depth"] for h in samples} == {0, 1}  # capped at the architecture's maximum
    mapped = resolve_space({"freeze_depth": {"int": [0, 3]}}, max_freeze_depth=3)
    assert suggest_hparams(mapped, FixedTrial({"freeze_depth": 3})) == {"freeze_depth": 3}
    with pytest.raises(ConfigError, match="above this architecture's maximum 2"):
        resolve_space({"freeze_depth": {"int": [0, 3]}}, max_freeze_depth=2)
