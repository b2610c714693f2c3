"""A reproducible winner: `report --best-config` then `boxtune train` gives the trial's epochs exactly on CPU."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from shared_run import EPOCHS, result_rows, trial_dirs

from tune.cli import main

# what a trial computes: losses, learning rate, the 12 COCO numbers, the best-so-far and score keys
TIMING = ("images_per_s", "train_s", "eval_s", "timestamp", "time_this_iter_s", "time_total_s")


def _trial(run, trial_id):
    return next(d for d in trial_dirs(run) if result_rows(d) and result_rows(d)[0]["trial_id"] == trial_id)


def _computed(row):
    return {k: v for k, v in row.items() if k not in TIMING and isinstance(v, int | float) and not isinstance(v, bool)
            and not k.startswith(("time_", "iterations_", "training_iteration", "pid", "done"))}


@pytest.fixture(scope="module")
def best_yaml(shared_run, tmp_path_factory):
    run = shared_run.run
    ranking = pq.read_table(run / "ranking.parquet").to_pylist()
    chosen = next(r for r in ranking if r["epochs"] == EPOCHS)  # the best trial that ran every epoch
    path = tmp_path_factory.mktemp("best") / "best.yaml"
    assert main(["report", str(run), "--best-config", str(path), "--trial", chosen["trial"]]) == 0
    return chosen["trial"], path


def test_best_config_holds_what_the_trial_used(shared_run, best_yaml):
    trial_id, path = best_yaml
    data = yaml.safe_load(path.read_text())
    params = json.loads((_trial(shared_run.run, trial_id) / "params.json").read_text())
    sweep = shared_run.config
    assert data["data"] == {"path": str(shared_run.run / "manifest.parquet"), "seed": sweep["data"]["seed"]}
    assert data["threads"] == 1  # resources.cpu
    assert data["training"]["epochs"] == EPOCHS and data["training"]["seed"] == sweep["training"]["seed"]
    assert {k: data["model"][k] for k in sweep["model"]} == sweep["model"]
    assert {k: data["hparams"][k] for k in params} == params  # every sampled value
    assert data["hparams"]["batch_size"] == 4  # the space's constant


def test_train_reproduces_the_trial_exactly(shared_run, best_yaml, tmp_path, capsys):
    trial_id, path = best_yaml
    out = tmp_path / "again"
    assert main(["train", str(path), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    swept = [_computed(r) for r in result_rows(_trial(shared_run.run, trial_id))]
    trained = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(trained) == len(swept) == EPOCHS
    for mine, theirs in zip(trained, swept, strict=True):
        assert {k: mine[k] for k in theirs if k in mine} == {k: theirs[k] for k in theirs if k in mine}
        assert {"loss", "AP", "AR100", "lr"} <= set(theirs) & set(mine)
    # one summary table: the best epoch, its 12 COCO numbers, the checkpoint
    best = json.loads((out / "best.json").read_text())
    summary = printed[printed.index("best epoch"):]
    assert summary.startswith(f"best epoch {best['epoch']} of {EPOCHS}")
    assert summary.split("\n")[1].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert summary.split("\n")[3].split() == ["AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert float(summary.split("\n")[2].split()[0]) == pytest.approx(best["metrics"]["AP"], abs=5e-4)
    epoch = best["epoch"]
    assert f"checkpoint: {out / 'checkpoints' / f'epoch_{epoch:04d}'}" in summary
    assert "{" not in summary.split("checkpoint:")[0]  # no JSON dump


def test_best_config_starts_a_longer_run(shared_run, best_yaml, tmp_path):
    trial_id, path = best_yaml
    out = tmp_path / "longer"
    # two loader workers, one more epoch: the constant schedule makes the first two epochs the trial's
    assert main(["train", str(path), "--out", str(out), "--device", "cpu", "--epochs", str(EPOCHS + 1),
                 "--set", "training.num_workers=2"]) == 0
    trained = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in trained] == list(range(1, EPOCHS + 2))
    swept = [_computed(r) for r in result_rows(_trial(shared_run.run, trial_id))]
    for mine, theirs in zip(trained, swept, strict=False):
        for key in ("loss", "loss_classifier", "AP", "AR100", "lr"):
            assert mine[key] == theirs[key]
