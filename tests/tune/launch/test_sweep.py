"""End-to-end sweeps on tiny generated data, on the session's local Ray."""

from __future__ import annotations

import json
import math
import os
import textwrap

import pyarrow.parquet as pq
import pytest
from conftest import tiny_sweep

from trainables.errors import ConfigError
from trainables.objective import fold_score
from tune.config import SweepConfig
from tune.results.report import format_ranking
from tune.run import load_sweep, rank_trials
from tune.workflow import run_sweep

# conditional parameters under their branch: momentum/nesterov only for sgd, beta1 only for adam
SPACE = {
    "optimizer": {"choice": ["sgd", "adam"]},
    "lr": {"loguniform": [0.002, 0.02]},
    "momentum": {"uniform": [0.8, 0.95], "when": {"optimizer": "sgd"}},
    "nesterov": {"choice": [True, False], "when": {"optimizer": "sgd"}},
    "beta1": {"uniform": [0.85, 0.95], "when": {"optimizer": "adam"}},
    "batch_size": 4,
}


def _config(tmp_path, tiny_demo, **over):
    data = tiny_sweep("e2e", tiny_demo, tmp_path / "runs",
                      search={"space": SPACE, "num_trials": 4, "sampler": "random", "seed": 3}, max_concurrent=2)
    for key, value in over.items():
        data[key] = value
    return SweepConfig.model_validate(data)


def _history(trial_dir):
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_demo, ray_local):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = _config(tmp, tiny_demo)
    rows = run_sweep(cfg, echo=lambda *_: None)
    return cfg, rows, tmp / "runs" / "e2e"


def test_sweep_ranks_by_best_epoch_ap(finished_sweep):
    cfg, rows, run = finished_sweep
    assert len(rows) == cfg.search.num_trials
    assert all(r["status"] == "TERMINATED" and r["error"] is None for r in rows)
    # recompute every trial's best epoch from Ray's own result files
    by_trial = {}
    for trial_dir in run.iterdir():
        if (trial_dir / "result.json").is_file():
            hist = _history(trial_dir)
            best = max(hist, key=lambda m: (m["score"], m["epoch"]))  # the later of equal scores, as Ray keeps
            assert all(m["score"] == fold_score(m["AP"], m["AR100"]) for m in hist)  # search.metric: AP
            by_trial[hist[0]["trial_id"]] = (best, len(hist))
    assert set(by_trial) == {r["trial"] for r in rows}
    for row in rows:
        best, epochs = by_trial[row["trial"]]
        assert row["AP"] == pytest.approx(best["AP"]) and row["AR100"] == pytest.approx(best["AR100"])
        assert row["best_epoch"] == best["epoch"] and row["epochs"] == epochs == 2
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    keys = [(round(r["AP"], 6), r["AR100"]) for r in rows]  # the score orders by AP to 1e-6, then AR100
    assert keys == sorted(keys, reverse=True)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]


def test_conditional_params_only_under_their_branch(finished_sweep):
    _, _, run = finished_sweep
    configs = [json.loads((d / "params.json").read_text()) for d in run.iterdir() if (d / "params.json").is_file()]
    assert len(configs) == 4
    for c in configs:
        if c["optimizer"] == "sgd":
            assert {"momentum", "nesterov"} <= set(c) and "beta1" not in c
        else:
            assert "beta1" in c and not {"momentum", "nesterov"} & set(c)
        assert c["batch_size"] == 4


def test_ranking_parquet_and_formats(finished_sweep):
    _, rows, run = finished_sweep
    table = pq.read_table(run / "ranking.parquet").to_pylist()
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert [r["AP"] for r in table] == pytest.approx([r["AP"] for r in rows])
    text = format_ranking(rows, top=2)
    assert text.splitlines()[0].split()[:4] == ["rank", "trial", "status", "AP"]
    assert len([ln for ln in text.splitlines()[1:] if ln.strip() and ln.split()[0].isdigit()]) == 2
    as_json = json.loads(format_ranking(rows, fmt="json"))
    assert [t["trial"] for t in as_json["trials"]] == [r["trial"] for r in rows]
    csv_lines = format_ranking(rows, fmt="csv").strip().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("rank,trial,status,AP")
    # what varied is shown; what was constant is not
    assert "optimizer" in rows[0] and "batch_size" not in rows[0]


def test_sweep_folder_records_config_and_versions(finished_sweep):
    cfg, _, run = finished_sweep
    info = json.loads((run / "boxtune.json").read_text())
    assert set(info) >= {"boxtune", "ray", "torch", "torchvision"}
    assert (run / "manifest.parquet").is_file()
    again = SweepConfig.model_validate(__import__("yaml").safe_load((run / "sweep.yaml").read_text()))
    assert again == cfg


def test_existing_name_refused(finished_sweep, tiny_demo):
    cfg, _, run = finished_sweep
    with pytest.raises(ConfigError, match="already exists"):
        run_sweep(cfg, echo=lambda *_: None)


def test_errored_trial_is_listed_and_others_finish(tmp_path, tiny_demo, ray_local, monkeypatch):
    # a space whose second trial diverges: lr 10 with SGD makes the loss non-finite within a few steps
    module = tmp_path / "diverging_space.py"
    module.write_text(textwrap.dedent("""
        def space(trial):
            trial.suggest_categorical("optimizer", ["sgd"])
            return {"lr": 10.0 if trial.number == 1 else 0.005, "batch_size": 4}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _config(tmp_path, tiny_demo, name="nan", search={"space": "diverging_space:space", "num_trials": 3})
    rows = run_sweep(cfg, echo=lambda *_: None)
    errored = [r for r in rows if r["status"] == "ERROR"]
    finished = [r for r in rows if r["status"] == "TERMINATED"]
    assert len(errored) == 1 and len(finished) == 2
    assert "non-finite loss at epoch 1, step" in errored[0]["error"]
    assert rows[-1]["status"] == "ERROR" and errored[0]["best_epoch"] == 0 and math.isnan(errored[0]["AP"])
    assert "errored trials:" in format_ranking(rows)
    view = load_sweep(str(tmp_path / "runs" / "nan"))
    assert [r["trial"] for r in rank_trials(view)] == [r["trial"] for r in rows]


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"cpu": 1, "gpu": 1}, "resources.gpu: each trial asks for 1 GPU, but no node of the Ray cluster has that many"),
        ({"cpu": 64}, "resources.cpu: each trial asks for 64 CPUs, but no single node has that"),
    ],
)
def test_preflight_refuses_impossible_trials(tmp_path, tiny_demo, ray_local, resources, message):
    cfg = _config(tmp_path, tiny_demo, name="pre", resources=resources)
    with pytest.raises(ConfigError) as err:
        run_sweep(cfg, echo=lambda *_: None)
    assert message in str(err.value)
    assert not (tmp_path / "runs" / "pre" / "sweep.yaml").exists()


def test_space_that_samples_rejected_config_fails_before_ray(tmp_path, tiny_demo):
    bad = {"optimizer": {"choice": ["adam"]}, "momentum": 0.9}
    cfg = _config(tmp_path, tiny_demo, name="bad", search={"space": bad, "num_trials": 2})
    with pytest.raises(ConfigError, match="momentum"):
        run_sweep(cfg, echo=lambda *_: None)
    assert not (tmp_path / "runs" / "bad").exists()


# Ray Tune reads these from the environment inside Tuner.fit(); a sweep sets them for its own fit
_TUNE_SETTINGS = ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S")
_TUNE_SETTINGS_AT_IMPORT = {name: os.environ.get(name) for name in _TUNE_SETTINGS}  # before any sweep ran


def test_tune_settings_hold_during_the_fit_and_do_not_leak(finished_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run = finished_sweep
    assert {name: os.environ.get(name) for name in _TUNE_SETTINGS} == _TUNE_SETTINGS_AT_IMPORT
    # in effect during the fit: Ray's own TensorBoard logger (ray/tune/* scalars) never ran
    folders = [path.parent for path in run.glob("*/result.json")]
    assert folders
    for folder in folders:
        events = EventAccumulator(str(folder))
        events.Reload()
        scalars = events.Tags()["scalars"]
        assert "coco/AP" in scalars and not [tag for tag in scalars if tag.startswith("ray/")], (folder, scalars)


@pytest.mark.parametrize("preset", [None, "7"])
def test_tune_environment_restores_what_was_there(monkeypatch, preset):
    from tune.launch.sweep import _tune_environment

    threshold = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    if preset is None:
        monkeypatch.delenv(threshold, raising=False)
    else:
        monkeypatch.setenv(threshold, preset)
    with _tune_environment():
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
        assert os.environ[threshold] == (preset or "0")  # a threshold the user set is kept
    assert os.environ.get(threshold) == preset and "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ


def test_ranking_table_keeps_small_hyperparameters_significant():
    from tune.results.report import format_ranking

    rows = [{"rank": 1, "trial": "a", "status": "TERMINATED", "AP": 0.00012, "test_AP": 0.0042, "lr_adam": 0.000123,
             "eps": 3.42e-09, "hflip_p": 0.5}]
    header, cells = [line.split() for line in format_ranking(rows).splitlines()[:2]]
    assert dict(zip(header, cells, strict=True)) == {
        "rank": "1", "trial": "a", "status": "TERMINATED", "AP": "0.0001", "test_AP": "0.0042", "lr_adam": "0.000123",
        "eps": "3.42e-09", "hflip_p": "0.5000"}
