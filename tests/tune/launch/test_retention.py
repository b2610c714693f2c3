"""Bounded disk: checkpoints for the top ``checkpoints.keep_trials`` trials only, one stripped checkpoint each."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from pyarrow import fs as pafs
from shared_run import KEEP_TRIALS, result_rows, trial_dirs

from trainables.checkpoint import TrialState, load_checkpoint, save_checkpoint
from trainables.errors import BoxtuneError
from tune.cli import main
from tune.launch.retention import strip_checkpoint
from tune.run.layout import RETENTION_FILE
from tune.ship.export import export_best


def _checkpoints(trial_dir):
    return sorted(p.name for p in trial_dir.glob("checkpoint_*"))


def _by_id(run):
    return {result_rows(d)[0]["trial_id"]: d for d in trial_dirs(run) if result_rows(d)}


def test_only_the_top_trials_keep_one_stripped_checkpoint(shared_run):
    run = shared_run.run
    ranking = [r for r in pq.read_table(run / "ranking.parquet").to_pylist() if r["best_epoch"] > 0]
    record = json.loads((run / RETENTION_FILE).read_text())
    assert record["keep_trials"] == KEEP_TRIALS
    top = {r["trial"] for r in ranking[:KEEP_TRIALS]}
    assert set(record["kept"]) == top and set(record["deleted"]) == {r["trial"] for r in ranking[KEEP_TRIALS:]}
    assert len(record["deleted"]) == len(ranking) - KEEP_TRIALS >= 1
    dirs = _by_id(run)
    for row in ranking:
        trial_dir = dirs[row["trial"]]
        # what stays for every trial: results, config, TensorBoard events
        assert len(result_rows(trial_dir)) == row["epochs"] and (trial_dir / "params.json").is_file()
        assert list(trial_dir.glob("events.out.tfevents.*"))
        if row["trial"] not in top:
            assert _checkpoints(trial_dir) == []
            continue
        assert _checkpoints(trial_dir) == [record["kept"][row["trial"]]]  # the best epoch's, not the latest too
        payload = torch.load(trial_dir / _checkpoints(trial_dir)[0] / "checkpoint.pt", weights_only=True)
        assert payload["stripped"] is True and payload["optimizer"] == payload["scheduler"] == payload["scaler"] == {}
        assert payload["epoch"] == row["best_epoch"] and payload["model"]


def test_export_and_trial_of_a_kept_trial_work(shared_run, tmp_path):
    run = shared_run.run
    record = json.loads((run / RETENTION_FILE).read_text())
    ranking = [r for r in pq.read_table(run / "ranking.parquet").to_pylist() if r["best_epoch"] > 0]
    best = export_best(str(run), tmp_path / "best.pt")
    payload = torch.load(best, weights_only=True)
    assert payload["trial_id"] == ranking[0]["trial"] and payload["epoch"] == ranking[0]["best_epoch"]
    second = ranking[1]["trial"]
    assert second in record["kept"]
    assert main(["export", str(run), "--out", str(tmp_path / "second.pt"), "--trial", second]) == 0
    assert torch.load(tmp_path / "second.pt", weights_only=True)["epoch"] == ranking[1]["best_epoch"]


def test_exporting_a_deleted_trial_says_why(shared_run, tmp_path, capsys):
    run = shared_run.run
    gone = sorted(json.loads((run / RETENTION_FILE).read_text())["deleted"])[0]
    with pytest.raises(BoxtuneError, match=rf"trial {gone} has no checkpoint left: it was deleted because it ended "
                                           rf"outside the top {KEEP_TRIALS} trials \(checkpoints.keep_trials: {KEEP_TRIALS}\)"):
        export_best(str(run), tmp_path / "gone.pt", trial=gone)
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "gone.pt"), "--trial", gone]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "metrics, events and config remain" in err
    assert not (tmp_path / "gone.pt").exists()


def test_resume_of_a_finished_sweep_keeps_the_record(shared_run, tmp_path, ray_local, monkeypatch):
    from tune.workflow import resume_sweep

    monkeypatch.syspath_prepend(str(shared_run.run.parents[1]))  # the shared run's search space module
    run = tmp_path / "shared"
    shutil.copytree(shared_run.run, run)  # the shared run stays as other tests read it
    before = json.loads((run / RETENTION_FILE).read_text())
    rows = resume_sweep(str(run), echo=lambda *_: None)
    assert json.loads((run / RETENTION_FILE).read_text())["deleted"] == before["deleted"]
    assert {r["trial"] for r in rows if r["status"] == "TERMINATED"} >= set(before["kept"])
    for trial, name in before["kept"].items():
        assert _checkpoints(_by_id(run)[trial]) == [name]


def test_stripping_keeps_the_weights_and_frees_the_optimiser_state(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()  # momentum buffers: one more copy of every weight
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    state = TrialState(epoch=2, model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                       scaler={}, rng={}, config={}, metrics={"AP": 0.5}, classes=[], architecture="x", model_kwargs={},
                       history=[])
    path = save_checkpoint(tmp_path, state)
    before = path.stat().st_size
    freed = strip_checkpoint(pafs.LocalFileSystem(), str(tmp_path))
    after = path.stat().st_size
    assert freed == before - after and after < 0.6 * before  # the momentum buffers were half of it
    loaded = load_checkpoint(tmp_path)
    assert loaded.optimizer == {} and loaded.epoch == 2 and loaded.metrics == {"AP": 0.5}
    assert all(torch.equal(loaded.model[k], v) for k, v in model.state_dict().items())
    assert strip_checkpoint(pafs.LocalFileSystem(), str(tmp_path)) == 0  # once only
