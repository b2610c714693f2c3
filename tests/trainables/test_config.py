"""Config validation: every problem named by key, with the bad value and what is accepted."""

from __future__ import annotations

import textwrap

import pytest

from trainables.config import HParams, TrialConfig, parse_trial_config
from trainables.errors import ConfigError
from tune.config import SweepConfig, TrainConfig, apply_overrides, load_config


def test_defaults_validate():
    cfg = parse_trial_config({})
    assert cfg.hparams.optimizer == "sgd" and cfg.training.epochs == 10
    assert cfg.model.architecture == "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"optimizer": "adam", "momentum": 0.9}, "momentum applies only to optimizer sgd, but optimizer is 'adam'"),
        ({"optimizer": "sgd", "beta1": 0.8}, "beta1 applies only to optimizer adam/adamw, but optimizer is 'sgd'"),
        ({"schedule": "cosine", "step_size": 3}, "step_size applies only to schedule step, but schedule is 'cosine'"),
        ({"schedule": "constant", "gamma": 0.5}, "gamma applies only to schedule exponential/multistep/step"),
        ({"schedule": "multistep", "milestones": [5, 2]}, "milestones must be increasing, got [5, 2]"),
        ({"lr": -1.0}, "hparams.lr: Input should be greater than 0 (got -1.0)"),
        ({"optimizer": "rmsprop"}, "hparams.optimizer: Input should be 'sgd', 'adam' or 'adamw' (got 'rmsprop')"),
        ({"lr_rate": 0.1}, "hparams.lr_rate: unknown key; accepted:"),
        ({"hflip": 0.5}, "(did you mean 'hflip_p'?)"),
    ],
)
def test_bad_hparams_named(hparams, message):
    with pytest.raises(ConfigError) as err:
        parse_trial_config({"hparams": hparams})
    assert message in str(err.value)


def test_branch_keys_allowed_on_their_branch():
    hp = HParams(optimizer="adamw", beta1=0.85, schedule="step", step_size=2, gamma=0.5)
    assert (hp.beta1, hp.step_size, hp.gamma) == (0.85, 2, 0.5)
    # the branch rule reads what was set: defaults of other branches stay harmless
    assert HParams(optimizer="adam").momentum == 0.9


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as err:
        TrialConfig.model_validate  # noqa: B018 - keep the schema referenced
        parse_trial_config({"model": {"architecture": "yolo", "min_size": 10}, "training": {"epochs": 0}})
    text = str(err.value)
    assert "model.architecture" in text and "model.min_size" in text and "training.epochs" in text


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BAD_SWEEPS = [
    ("data: {path: x}\nserch: {num_trials: 2}\n", "serch: unknown key (did you mean 'search'?)"),
    ("model: {architecture: x}\n", "data: Field required"),
    ("data: {path: x, val_fraction: 1.5}\n", "data.val_fraction: Input should be less than 1 (got 1.5)"),
    ("data: {path: x}\nsearch: {sampler: bayes}\n", "search.sampler: Input should be 'tpe', 'random', 'cmaes', 'gp' or 'qmc' (got 'bayes')"),
    ("data: {path: x}\nscheduler: {name: hyperband}\n", "scheduler.name: Input should be 'asha', 'halving' or 'fifo' (got 'hyperband')"),
    ("data: {path: x}\nresources: {gpu: 2}\n", "resources.gpu: a trial trains on one GPU, so 2 would hold 1 more that "
     "stay idle; use 1 (trials then run side by side, one per GPU) or a fraction (several per GPU)"),
    ("data: {path: x}\nresources: {gpu: 1.5}\n", "resources.gpu: a trial trains on one GPU, so 1.5 would hold 0.5 more"),
    ("data: {path: x}\nresources: {cpu: 0}\n", "resources.cpu: Input should be greater than 0 (got 0)"),
    ("data: {path: x}\nhparams: {optimizer: adam, momentum: 0.9}\n", "momentum applies only to optimizer sgd"),
    ("data: {path: x}\nhparams: {lrate: 0.1}\n", "hparams.lrate: unknown key (did you mean 'lr'?)"),
    ("data: {path: x}\nmodel: {architecture: fasterrcnn_resnet18}\n", "model.architecture: Input should be"),
    ("data: {path: x}\nname: a/b\n", "name: name must be a plain folder name, got 'a/b'"),
    ("data: {path: x}\nmax_concurrent: 0\n", "max_concurrent: Input should be greater than or equal to 1 (got 0)"),
    ("- just\n- a list\n", "expected a mapping of sections at the top level, got list"),
    ("data: {path: x\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_SWEEPS)
def test_bad_sweep_configs(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, SweepConfig)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_overrides_and_relative_paths(tmp_path):
    path = _write(tmp_path, "data: {path: data/ann.json}\nsearch: {num_trials: 2}\nstorage: runs\n")
    cfg = load_config(path, SweepConfig, overrides=["search.num_trials=7", "resources.gpu=0.5", "model.min_size=160"])
    assert cfg.search.num_trials == 7 and cfg.resources.gpu == 0.5 and cfg.model.min_size == 160
    assert cfg.data.path == str((tmp_path / "data" / "ann.json").resolve())
    assert cfg.storage == str((tmp_path / "runs").resolve())
    remote = load_config(path, SweepConfig, overrides=["storage=s3://bucket/runs"])
    assert remote.storage == "s3://bucket/runs"
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["search.num_trials"])


def test_train_config_hparams_typed(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("data: {path: d}\nhparams: {optimizer: adam, lr: 0.001, schedule: exponential, gamma: 0.65}\n")
    cfg = load_config(path, TrainConfig)
    assert cfg.hparams.optimizer == "adam" and cfg.hparams.gamma == 0.65
