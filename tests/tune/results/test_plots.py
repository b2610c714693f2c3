"""``boxtune report --plot``: which PNGs are written and what their axes hold."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from tune.results.plots import ap_per_epoch_figure, hparam_figure, searched_hparams, write_plots
from tune.run.ranking import rank_trials
from tune.run.view import SweepView, TrialView

EPOCHS = 4  # training.epochs of the sweep


def trial(trial_id: str, aps: list[float], config: dict, status: str = "TERMINATED", error: str | None = None) -> TrialView:
    history = [{"epoch": e, "AP": ap, "AR100": ap + 0.1, "AP50": ap + 0.2} for e, ap in enumerate(aps, 1)]
    return TrialView(trial_id, status, config, history, error, f"/runs/s/{trial_id}")


@pytest.fixture
def view(tmp_path) -> SweepView:
    run = tmp_path / "s"
    run.mkdir()
    (run / "sweep.yaml").write_text(f"search:\n  num_trials: 6\ntraining:\n  epochs: {EPOCHS}\n")
    trials = [
        trial("t1", [0.10, 0.20, 0.30, 0.35], {"lr": 1e-4, "optimizer": "sgd", "nesterov": True, "batch_size": 2}),
        trial("t2", [0.05, 0.08], {"lr": 3e-3, "optimizer": "adam", "batch_size": 4}),  # stopped by ASHA
        trial("t3", [0.12, 0.25, 0.31, 0.40], {"lr": 2e-2, "optimizer": "adamw", "batch_size": 2}),
        trial("t4", [0.02], {"lr": 5e-3, "optimizer": "sgd", "nesterov": False, "batch_size": 4}, status="ERROR",
              error="NonFiniteLossError: non-finite loss at epoch 2, step 3"),
        trial("t5", [], {"lr": 1e-3, "optimizer": "adam", "batch_size": 2}, status="ERROR", error="CUDA out of memory"),
        trial("t6", [0.07, 0.15, 0.22], {"lr": 7e-4, "optimizer": "adamw", "batch_size": 4}, status="RUNNING"),
    ]
    return SweepView(str(run), trials, 6, None)


def test_writes_one_png_per_plot(view, tmp_path):
    paths = write_plots(view, rank_trials(view), tmp_path / "plots")
    names = [p.name for p in paths]
    # 5 finished trials: too few for importance (see test_importance.py)
    assert names == ["ap_per_epoch.png", "ap_vs_batch_size.png", "ap_vs_lr.png", "ap_vs_nesterov.png",
                     "ap_vs_optimizer.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 200
            assert sum(1 for n in image.convert("L").histogram() if n) > 10  # something was drawn


def test_ap_per_epoch_marks_trials_stopped_early(view):
    ax = ap_per_epoch_figure(view, planned_epochs=EPOCHS).axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert set(lines) == {"t1", "t2", "t3", "t4", "t6", "t2:stopped"}  # t5 errored before an epoch
    assert list(lines["t1"].get_xdata()) == [1, 2, 3, 4] and list(lines["t1"].get_ydata()) == [0.10, 0.20, 0.30, 0.35]
    stopped = lines["t2:stopped"]
    assert stopped.get_marker() == "x" and list(stopped.get_xdata()) == [2] and list(stopped.get_ydata()) == [0.08]
    assert lines["t4"].get_linestyle() == "--"  # errored
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "t2 (stopped at epoch 2)" in labels and "t6 (running)" in labels and "t4 (error)" in labels
    assert any("stopped early" in label for label in labels)
    assert ax.get_xlabel() == "epoch" and "AP@[.5:.95]" in ax.get_ylabel()


@pytest.mark.parametrize("name,scale", [("lr", "log"), ("batch_size", "linear")])
def test_numeric_hyperparameters(view, name, scale):
    rows = rank_trials(view)
    ax = hparam_figure(view, rows, name).axes[0]
    assert ax.get_xscale() == scale
    points = ax.collections[0].get_offsets()
    finished = {r["trial"]: r for r in rows if r["best_epoch"]}
    assert len(points) == len(finished) == 5
    by_trial = {t.trial_id: t.config[name] for t in view.trials}
    assert sorted(map(tuple, points.tolist())) == sorted((float(by_trial[t]), r["AP"]) for t, r in finished.items())


def test_categorical_hyperparameter_is_a_strip(view):
    ax = hparam_figure(view, rank_trials(view), "optimizer").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["adam", "adamw", "sgd"]
    xs = ax.collections[0].get_offsets()[:, 0]
    assert all(abs(x - round(x)) <= 0.15 + 1e-9 for x in xs)  # every point within its category's strip
    best = ax.collections[1].get_offsets()[0]  # the ringed best trial: t3 (adamw, AP 0.40)
    assert round(best[0]) == 1 and best[1] == pytest.approx(0.40)


def test_searched_hyperparameters_are_the_varying_keys(view):
    assert searched_hparams(view) == ["batch_size", "lr", "nesterov", "optimizer"]


def test_importance_needs_eight_finished_trials(view, tmp_path, capsys):
    view.trials = [t for t in view.trials if t.trial_id in ("t1", "t3", "t5")]
    names = [p.name for p in write_plots(view, rank_trials(view), tmp_path)]
    assert "importance.png" not in names and "ap_per_epoch.png" in names
    assert "importance plot skipped: too few trials (it needs 8 finished, the sweep has 2)" in capsys.readouterr().err


def test_nan_ap_epochs_do_not_break_plots(view, tmp_path):
    view.trials[0].history[0]["AP"] = math.nan  # COCOeval: no detection at all in epoch 1
    assert (tmp_path / "p" / "ap_per_epoch.png") in write_plots(view, rank_trials(view), tmp_path / "p")
