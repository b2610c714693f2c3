"""The confirmation stage (``search.confirm``) end to end on the session's local Ray: the top configs
trained again on new seeds in ``<run>/confirm``, ranked by their mean, and the export that follows."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_sweep
from shared_run import result_rows, trial_dirs

from trainables.checkpoint import load_checkpoint
from trainables.errors import ConfigError
from tune.config import SweepConfig, load_config
from tune.results.best_config import best_train_config
from tune.ship.export import export_run
from tune.workflow import sweep

TOP, SEEDS, TRIALS, EPOCHS = 2, 2, 3, 1


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, tiny_demo, ray_local):
    tmp = tmp_path_factory.mktemp("confirm")
    cfg = SweepConfig.model_validate(tiny_sweep(
        "confirmed", tiny_demo, tmp / "runs", training={"epochs": EPOCHS, "seed": 0},
        search={"space": "quick", "num_trials": TRIALS, "sampler": "random", "seed": 0,
                "confirm": {"top": TOP, "seeds": SEEDS}}))
    lines: list[str] = []
    result = sweep(cfg, echo=lines.append)
    return result, tmp / "runs" / "confirmed", lines


def _best(trial_dir: Path) -> dict:
    """A trial's best epoch from Ray's result.json: the highest best_score, the first of equals."""
    rows = result_rows(trial_dir)
    return max(rows, key=lambda r: (r["score"], -r["epoch"]))


def _trial_config(trial_dir: Path) -> dict:
    """The trial config a trial's one kept checkpoint holds."""
    (checkpoint,) = trial_dir.glob("checkpoint_*")
    return load_checkpoint(checkpoint).config


def test_the_top_configs_train_again_on_new_seeds_in_their_own_experiment(confirmed):
    result, run, lines = confirmed
    search = {json.loads((d / "params.json").read_text()).get("confirm_of"): d for d in trial_dirs(run)}
    assert len(trial_dirs(run)) == TRIALS and set(search) == {None}  # the search's experiment holds its own trials only
    stage = trial_dirs(run / "confirm")
    assert len(stage) == TOP * SEEDS  # K x N more trials, each of full length
    assert all([int(r["epoch"]) for r in result_rows(d)] == list(range(1, EPOCHS + 1)) for d in stage)
    # the top K search trials by their own result files, each retrained on seeds 1..N (training.seed is 0)
    by_id = {result_rows(d)[0]["trial_id"]: d for d in trial_dirs(run)}
    top = sorted(by_id, key=lambda t: -_best(by_id[t])["score"])[:TOP]
    params = [json.loads((d / "params.json").read_text()) for d in stage]
    assert sorted((p["confirm_of"], p["confirm_seed"]) for p in params) == sorted(
        (t, s) for t in top for s in range(1, SEEDS + 1))
    for p, d in zip(params, stage, strict=True):
        # the search trial's whole trial config with another training seed, as each kept checkpoint records
        mine, its = _trial_config(d), _trial_config(by_id[p["confirm_of"]])
        assert mine["training"]["seed"] == p["confirm_seed"] and its["training"]["seed"] == 0
        assert {**mine, "training": {**mine["training"], "seed": 0}} == its
        assert result_rows(d)[0]["loss"] != result_rows(by_id[p["confirm_of"]])[0]["loss"]  # the seed acted
    # the search's Optuna study was not told of them: its experiment and its view hold the search's trials only
    assert len(result.view.trials) == TRIALS and len(result.view.confirm.trials) == TOP * SEEDS
    assert any("confirmation stage: the top 2 configs on 2 new training seeds each, 4 trials" in ln for ln in lines)


def test_the_ranking_is_the_mean_over_seeds_from_the_result_files(confirmed):
    result, run, _ = confirmed
    seeds: dict[str, list[tuple[str, float]]] = {}
    for d in trial_dirs(run):
        seeds.setdefault(result_rows(d)[0]["trial_id"], []).insert(0, (result_rows(d)[0]["trial_id"], _best(d)["AP"]))
    for d in sorted(trial_dirs(run / "confirm"), key=lambda d: json.loads((d / "params.json").read_text())["confirm_seed"]):
        of = json.loads((d / "params.json").read_text())["confirm_of"]
        seeds[of].append((result_rows(d)[0]["trial_id"], _best(d)["AP"]))
    ranked = pq.read_table(run / "ranking.parquet").to_pylist()
    assert ranked == [{k: r.get(k) for k in ranked[0]} for r in ranked]  # one schema
    confirmed_rows = [r for r in ranked if r["seeds"] > 1]
    assert [r["rank"] for r in confirmed_rows] == list(range(1, TOP + 1))  # confirmed configs rank first ...
    means = []
    for row in confirmed_rows:
        values = [ap for _, ap in seeds[row["trial"]]]
        assert row["seeds"] == SEEDS + 1  # the search trial's own seed counts as one
        assert row["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9)
        assert row["seed_sd"] == pytest.approx(statistics.stdev(values), abs=1e-9)
        assert (row["seed_min"], row["seed_max"]) == (pytest.approx(min(values)), pytest.approx(max(values)))
        # the seed that ships is the one closest to the mean, the search trial first among equals
        closest = min(seeds[row["trial"]], key=lambda s: round(abs(s[1] - statistics.fmean(values)), 9))
        assert row["ship"] == closest[0]
        means.append(row["mean"])
    assert means == sorted(means, reverse=True)  # ... by their mean
    assert all(r["seeds"] == 1 and r["ship"] == r["trial"] for r in ranked[TOP:])
    assert result.rows[0]["trial"] == ranked[0]["trial"]


def test_export_ships_the_best_mean_configs_seed_closest_to_its_mean(confirmed, tmp_path):
    result, run, _ = confirmed
    leader = pq.read_table(run / "ranking.parquet").to_pylist()[0]
    path, meta = export_run(str(run), tmp_path / "best.pt")
    assert meta["trial_id"] == leader["ship"]
    ranking = meta["ranking"]
    assert ranking["rank"] == 1 and ranking["config_trial"] == leader["trial"]
    assert ranking["mean"] == pytest.approx(leader["mean"]) and ranking["seeds"] == SEEDS + 1
    shipped = result.view.trial(leader["ship"])
    assert meta["epoch"] == int(max(shipped.history, key=lambda r: (r["score"], -r["epoch"]))["epoch"])
    assert ranking["value"] == pytest.approx(shipped.best()["AP"])
    assert torch.load(path, weights_only=True)["trial_id"] == leader["ship"]


def test_best_config_is_the_shipped_seed_with_its_own_training_seed(confirmed):
    result, run, _ = confirmed
    leader = pq.read_table(run / "ranking.parquet").to_pylist()[0]
    trial_id, data = best_train_config(result.view)
    assert trial_id == leader["ship"]
    assert data["training"]["seed"] == result.view.trial(trial_id).config.get("confirm_seed", 0)


@pytest.mark.parametrize(("override", "message"), [
    ("search.confirm.top=4", "search.confirm.top: 4 is more than search.num_trials (3)"),
    ("search.confirm.seeds=0", "search.confirm.seeds: Input should be greater than or equal to 1"),
    ("search.confirm.top=-1", "search.confirm.top: Input should be greater than or equal to 0"),
    ("checkpoints.keep_trials=1", "checkpoints.keep_trials (1) must be >= search.confirm.top (2)"),
])
def test_a_bad_confirm_section_is_a_config_error_naming_the_key(tmp_path, override, message):
    data = {"data": {"path": str(tmp_path)}, "search": {"num_trials": 3, "confirm": {"top": 2, "seeds": 2}}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, SweepConfig, data=data, overrides=[override])


def test_confirmation_is_off_by_default(tmp_path):
    cfg = load_config(None, SweepConfig, data={"data": {"path": str(tmp_path)}})
    assert cfg.search.confirm.top == 0
