"""A space that can produce a config a trial would reject fails before Ray starts, naming the key.

The spaces below go wrong only at a corner of a range (momentum exactly 0, every jitter magnitude
at 0, the shortest one-cycle warm-up at the largest batch), where random draws almost never land;
the check tries every corner under the branch that reaches it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import REPO, TINY_MODEL
from torch.utils.data import DataLoader

from search_spaces import first_trials
from trainables.errors import ConfigError
from tune.config import SweepConfig
from tune.launch.space_check import iterations_per_epoch
from tune.launch.sweep import check_space, grace_period, make_searcher, mixed_starts_note, pretrained_start

N_TRAIN = 18  # the tiny demo's train split: 24 images, val_fraction 0.25


def _config(tmp_path, tiny_demo, space, *, epochs=2, **over):
    return SweepConfig.model_validate({
        "name": "check",
        "data": {"path": str(tiny_demo), "val_fraction": 0.25, "seed": 0},
        "model": TINY_MODEL,
        "training": {"epochs": epochs, "seed": 0},
        "search": {"space": space, "num_trials": 2, "sampler": "random", "seed": 0},
        "scheduler": {"name": "fifo"},
        "storage": str(tmp_path / "runs"),
        **over,
    })


@pytest.mark.parametrize("n, batch_size", [(18, 4), (18, 8), (16, 4), (1, 8), (7, 1)])
def test_iterations_per_epoch_is_the_loaders_length(n, batch_size):
    loader = DataLoader(list(range(n)), batch_size=batch_size, shuffle=True)  # as the trial loop builds it
    assert iterations_per_epoch(n, batch_size) == len(loader)


CORNER_FAILURES = [
    # Nesterov needs momentum > 0: only the low end of the sgd branch's momentum range is rejected
    ({"optimizer": {"choice": ["adam", "sgd"]}, "momentum": {"uniform": [0.0, 0.9], "when": {"optimizer": "sgd"}},
      "nesterov": {"value": True, "when": {"optimizer": "sgd"}}, "lr": {"loguniform": [0.001, 0.01]}},
     "hparams.nesterov: Nesterov momentum needs hparams.momentum > 0", {"optimizer": "sgd", "momentum": 0.0}),
    # colour jitter switched on with every magnitude at 0 changes nothing
    ({"jitter_p": {"choice": [0.0, 0.5]}, "brightness": {"uniform": [0.0, 0.3]}, "contrast": {"uniform": [0.0, 0.3]},
      "saturation": {"uniform": [0.0, 0.3]}, "hue": {"uniform": [0.0, 0.1]}},
     "hparams.jitter_p: colour jitter is on but brightness, contrast, saturation and hue are all 0",
     {"jitter_p": 0.5, "brightness": 0.0, "hue": 0.0}),
    # one-cycle over 2 epochs of ceil(18 / 8) = 3 iterations: pct_start 0.1 leaves 0.6 warm-up steps,
    # while at batch size 2 (9 iterations per epoch) the same pct_start is fine
    ({"schedule": {"choice": ["constant", "onecycle"]}, "batch_size": {"choice": [2, 8]},
      "pct_start": {"uniform": [0.1, 0.3], "when": {"schedule": "onecycle"}}},
     "hparams.pct_start: 0.1 of 6 iterations leaves no one-cycle warm-up", {"batch_size": 8, "pct_start": 0.1}),
    # zoom-out on with a canvas no larger than the image
    ({"zoom_out_p": {"choice": [0.0, 0.5]}, "zoom_out_max": {"uniform": [1.0, 2.0]}},
     "hparams.zoom_out_max: must be > 1 when zoom_out_p > 0", {"zoom_out_p": 0.5, "zoom_out_max": 1.0}),
]


@pytest.mark.parametrize("space, message, sample", CORNER_FAILURES, ids=["nesterov", "jitter", "onecycle", "zoom_out"])
def test_a_corner_the_trainable_rejects_fails_naming_the_key(tmp_path, tiny_demo, space, message, sample):
    cfg = _config(tmp_path, tiny_demo, space)
    with pytest.raises(ConfigError) as err:
        check_space(cfg, n_train=N_TRAIN)
    text = str(err.value)
    assert text.startswith("search.space: sampled {") and message in text, text
    shown = ast.literal_eval(text.split("sampled ", 1)[1].split(" which the trainable rejects")[0])  # the sample, as a dict
    assert {k: shown[k] for k in sample} == sample


def test_the_same_space_passes_where_its_corners_can_act(tmp_path, tiny_demo):
    # the one-cycle space above, with batch sizes whose warm-up always has more than one step
    space = {"schedule": {"choice": ["constant", "onecycle"]}, "batch_size": {"choice": [2, 4]},
             "pct_start": {"uniform": [0.1, 0.3], "when": {"schedule": "onecycle"}}}
    checked = check_space(_config(tmp_path, tiny_demo, space, epochs=3), n_train=N_TRAIN, samples=64)
    # 64 random draws plus every corner: each schedule, each batch size, both ends of pct_start, each
    # tried with the other parameters at their low and at their high ends
    assert checked > 64 + 8


def test_builtin_default_space_is_refused_for_a_run_too_short_for_onecycle(tmp_path, tiny_demo):
    # 2 epochs of 3 iterations at batch size 8: the default space's one-cycle corner cannot warm up
    with pytest.raises(ConfigError, match=r"hparams\.pct_start: 0\.1 of 6 iterations"):
        check_space(_config(tmp_path, tiny_demo, "default"), n_train=N_TRAIN)
    assert check_space(_config(tmp_path, tiny_demo, "default", epochs=4), n_train=N_TRAIN) > 64


def _write_step_space(tmp_path):
    # a function space, which the declarative checks never see: step_size up to 4 in a 3-epoch run
    (tmp_path / "long_step_space.py").write_text(textwrap.dedent("""
        def space(trial):
            trial.suggest_categorical("schedule", ["step"])
            trial.suggest_int("step_size", 1, 4)
            return {"batch_size": 4}
    """))


def test_a_step_that_cannot_act_in_the_run_fails(tmp_path, tiny_demo, monkeypatch):
    _write_step_space(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"hparams\.step_size: [34] never acts in a run of 3 epochs \(must be in \[1, 2\]\)"):
        check_space(_config(tmp_path, tiny_demo, "long_step_space:space", epochs=3), n_train=N_TRAIN)


_PROBE = """
import json, sys
from tune.cli import main
rc = main(sys.argv[1:])
print("PROBE " + json.dumps({"rc": rc, "ray_imported": "ray" in sys.modules}))
"""


def test_boxtune_sweep_exits_2_before_ray_starts(tmp_path, tiny_demo):
    _write_step_space(tmp_path)
    cfg = _config(tmp_path, tiny_demo, "long_step_space:space", epochs=3).model_dump(mode="json")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # the installed command: exit status 2 and one line naming the key
    cli = subprocess.run([str(REPO / ".venv" / "bin" / "boxtune"), "sweep", str(path)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert cli.returncode == 2, cli.stderr[-2000:]
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boxtune: error: search.space: sampled"), cli.stderr
    assert "hparams.step_size" in lines[0] and "never acts in a run of 3 epochs" in lines[0]
    # the same entry point in-process: it returned before anything imported Ray, and wrote no run folder
    probe = subprocess.run([sys.executable, "-c", _PROBE, "sweep", str(path)], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)
    result = json.loads(next(ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE "))[6:])
    assert result == {"rc": 2, "ray_imported": False}
    assert not (tmp_path / "runs").exists()


def test_iterations_use_the_batch_size_the_trial_gets(tmp_path, tiny_demo):
    # batch_size from the sweep's hparams constants reaches the check: 18 images at 8 per batch
    cfg = _config(tmp_path, tiny_demo, {"schedule": {"choice": ["onecycle"]}, "pct_start": {"uniform": [0.1, 0.2]}},
                  hparams={"batch_size": 8})
    with pytest.raises(ConfigError, match=r"of 6 iterations"):
        check_space(cfg, n_train=N_TRAIN)


@pytest.mark.parametrize("weights, by_architecture, chosen, epochs, expected", [
    (None, {}, None, 6, 3),  # random weights: half the run, since early AP ranks nothing
    (None, {}, None, 1, 1),
    ("source.pth", {}, None, 6, 2),  # a trained detector: epoch 2 already ranks trials
    ("source.pth", {}, None, 1, 1),
    ("source.pth", {"fasterrcnn_mobilenet_v3_large_fpn": {"weights": None}}, None, 6, 3),  # one random start
    (None, {}, 2, 6, 2),  # set by the user
    ("source.pth", {}, 10, 4, 4),  # never past the run
])
def test_asha_grace_period_follows_the_start(tmp_path, tiny_demo, weights, by_architecture, chosen, epochs, expected):
    model = {**TINY_MODEL, "weights": weights, "by_architecture": by_architecture}
    scheduler = {"name": "asha"} if chosen is None else {"name": "asha", "grace_period": chosen}
    cfg = _config(tmp_path, tiny_demo, "quick", epochs=epochs, model=model, scheduler=scheduler)
    assert pretrained_start(cfg) == (weights is not None and not by_architecture)
    assert grace_period(cfg) == expected


MIXED_ARCHS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_fpn"]


@pytest.mark.parametrize("scheduler, weights, by_architecture, noted", [
    ("halving", "source.pth", {MIXED_ARCHS[0]: {"weights": None}}, True),  # SSDlite from random weights
    ("asha", None, {MIXED_ARCHS[1]: {"weights": "source.pth"}}, True),
    ("fifo", "source.pth", {MIXED_ARCHS[0]: {"weights": None}}, False),  # no rung compares them
    ("halving", "source.pth", {}, False),  # every trial from the same start
    ("halving", None, {}, False),
])
def test_early_stopping_across_pretrained_and_random_starts_is_noted(tmp_path, tiny_demo, scheduler, weights,
                                                                      by_architecture, noted):
    space = {"architecture": {"choice": MIXED_ARCHS}, "batch_size": 4}
    cfg = _config(tmp_path, tiny_demo, space, epochs=6, scheduler={"name": scheduler},
                  model={"weights": weights, "by_architecture": by_architecture})
    drawn: list[dict] = []
    check_space(cfg, n_train=N_TRAIN, drawn=drawn)
    note = mixed_starts_note(cfg, drawn)
    if not noted:
        assert note is None
        return
    random = next(a for a in MIXED_ARCHS if (by_architecture.get(a, {}).get("weights", weights)) is None)
    pretrained = next(a for a in MIXED_ARCHS if a != random)
    assert note == (f"note: the space starts {pretrained} from model.weights and {random} from random weights; "
                    f"{scheduler}'s first rung (epoch 3) ranks them together, and trials from random weights may not "
                    f"have taken off by then. scheduler.name: fifo, or one sweep per start, judges each trial on its "
                    f"whole run")


def test_default_sweeps_evaluate_the_seed_sgd_recipe_first(tmp_path, tiny_demo):
    cfg = _config(tmp_path, tiny_demo, "default", epochs=6)
    searcher = make_searcher(cfg)
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert first == first_trials("default", epochs=6)[0]  # enqueued: nothing left to sample
    assert second != first
