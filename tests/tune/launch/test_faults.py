"""Faults, as real processes: nothing a sweep has done is lost or done twice.

* a failure that every try repeats (a non-finite loss at the same seed) is not retried;
* SIGKILL of one trial's worker process: the trial goes on from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_sweep
from shared_run import RETRIES, result_rows, trial_attempts, trial_dirs, trial_epochs

from tune.run.layout import FAILURE_FILE, NODE_LOSS_FILE, RAY_OUTPUT_FILE

# ---- a deterministic failure is recorded once and re-raised by every retry ---------------------

def test_a_non_finite_loss_is_not_retried(shared_run):
    diverged = [d for d in trial_dirs(shared_run.run) if json.loads((d / "params.json").read_text()).get("lr") == 10.0]
    assert len(diverged) == 1, trial_dirs(shared_run.run)
    trial = diverged[0]
    attempts = trial_attempts(trial)
    # Ray did retry it `retries` times; only the first attempt trained, every retry re-raised the record
    assert len(attempts) == 1 + RETRIES
    assert attempts[0]["refused"] is None and attempts[0]["checkpoint"] is None
    assert [a["refused"] for a in attempts[1:]] == ["NonFiniteLossError"] * RETRIES
    failure = json.loads((trial / FAILURE_FILE).read_text())
    assert failure["type"] == "NonFiniteLossError" and failure["epoch"] == 1
    assert failure["message"].startswith(f"non-finite loss at epoch 1, step {failure['step']}: loss=nan")
    assert trial_epochs(trial) == []  # no epoch finished, in any attempt
    # the trial ends ERROR with the original message, the rest of the sweep finished
    rows = pq.read_table(shared_run.run / "ranking.parquet").to_pylist()
    errored = [r for r in rows if r["status"] == "ERROR"]
    assert len(errored) == 1 and errored[0]["trial"] in trial.name
    assert failure["message"] in errored[0]["error"]
    assert sum(r["status"] == "TERMINATED" for r in rows) == len(rows) - 1


# ---- SIGKILL of one trial's worker process ------------------------------------------------------

def _kill_worker_after_first_epoch(run: Path, epochs: int, record: dict, stop: threading.Event) -> None:
    """SIGKILL the process of the first trial that has reported an epoch but not its last."""
    while not stop.is_set():
        for trial in trial_dirs(run) if run.is_dir() else []:
            seen, attempts = trial_epochs(trial), trial_attempts(trial)
            if seen and seen[-1] < epochs and len(attempts) == 1:
                os.kill(attempts[0]["pid"], signal.SIGKILL)
                record.update(trial=trial, epochs_before=seen, pid=attempts[0]["pid"])
                return
        time.sleep(0.1)


def test_worker_sigkill_continues_from_the_last_checkpoint(tmp_path, tiny_demo, ray_local, capsys):
    from tune.config import SweepConfig
    from tune.workflow import run_sweep

    epochs = 3
    cfg = SweepConfig.model_validate(tiny_sweep(
        "worker_killed", tiny_demo, tmp_path / "runs", training={"epochs": epochs, "seed": 0},
        search={"space": "quick", "num_trials": 1, "sampler": "random", "seed": 0}, retries=1))
    run = tmp_path / "runs" / "worker_killed"
    record: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_worker_after_first_epoch, args=(run, epochs, record, stop), daemon=True)
    killer.start()
    try:
        rows = run_sweep(cfg, echo=lambda *_: None)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert record, "the trial finished before its worker could be killed"
    assert [r["status"] for r in rows] == ["TERMINATED"]
    trial = record["trial"]
    attempts = trial_attempts(trial)
    assert len(attempts) == 2 and attempts[1]["pid"] != record["pid"]
    assert attempts[0]["checkpoint"] is None and attempts[1]["checkpoint"] is not None
    results = result_rows(trial)
    assert [int(r["epoch"]) for r in results] == list(range(1, epochs + 1))  # each epoch once, none lost
    # the retry started after the last checkpoint the killed process reported, not at epoch 1
    restart = next(i for i, r in enumerate(results) if i and r["iterations_since_restore"] == 1)
    assert restart >= len(record["epochs_before"]) >= 1
    assert results[restart]["epoch"] == results[restart - 1]["epoch"] + 1
    assert results[-1]["iterations_since_restore"] == epochs - restart
    assert rows[0]["epochs"] == epochs
    # a process killed on a node that is still up is not a lost node (tune.launch.node_loss)
    assert "lost its node" not in capsys.readouterr().out
    assert not (run / NODE_LOSS_FILE).exists() and not (run / RAY_OUTPUT_FILE).exists()


def test_reports_keep_one_row_per_epoch_the_latest():
    from tune.run.view import _one_row_per_epoch

    rows = [{"epoch": 1, "AP": 0.1}, {"epoch": 2, "AP": 0.2}, {"epoch": 3, "AP": 0.3},
            {"epoch": 2, "AP": 0.25}, {"epoch": 3, "AP": 0.35}]
    assert _one_row_per_epoch(rows) == [{"epoch": 1, "AP": 0.1}, {"epoch": 2, "AP": 0.25}, {"epoch": 3, "AP": 0.35}]


def test_result_files_are_cut_back_to_the_checkpoint_epoch():
    from tune.launch.resume_logs import _cut_csv, _cut_json

    rows = [{"epoch": e, "AP": e / 10, "training_iteration": e} for e in (1, 2, 3)]
    kept, dropped = _cut_json("".join(json.dumps(r) + "\n" for r in rows), 2)
    assert [json.loads(ln)["epoch"] for ln in kept.splitlines()] == [1, 2] and dropped == 1
    csv_text = "epoch,AP,training_iteration\n1,0.1,1\n2,0.2,2\n3,0.3,3\n"
    assert _cut_csv(csv_text, 1) == "epoch,AP,training_iteration\n1,0.1,1\n"
    assert _cut_json("", 0) == ("", 0)


def test_gpu_out_of_memory_names_the_share_and_what_shrinks_it():
    from trainables.gpu_memory import gpu_out_of_memory

    packed = gpu_out_of_memory(3, fraction=0.25, card_mib=81559, held_mib=20390.4)
    assert str(packed) == (
        "out of GPU memory in epoch 3: the trial may hold 20390 MiB (resources.gpu 0.25 of a 81559 MiB card) "
        "and its allocator held 20390 MiB at peak; give each trial a larger resources.gpu (fewer trials per "
        "GPU), or lower hparams.batch_size (the space's batch_size choices) or model.max_size")
    whole = str(gpu_out_of_memory(1, fraction=None, card_mib=16000, held_mib=15800))
    assert "may hold 16000 MiB (a whole 16000 MiB card)" in whole and "use a larger GPU" in whole
    # with a measured context, the share its allocator may hold is one context short (what the preflight compares)
    measured = str(gpu_out_of_memory(2, fraction=0.25, card_mib=24564, held_mib=5600, context_mib=500))
    assert "may hold 5641 MiB (resources.gpu 0.25 of a 24564 MiB card, less 500 MiB for the CUDA context)" in measured


def test_packed_trials_and_their_contexts_fill_the_card_exactly():
    from trainables.gpu_memory import share_limit_mib

    for n in (1, 2, 4):
        assert n * (share_limit_mib(1 / n, 81559, 520) + 520) == pytest.approx(81559)
    assert share_limit_mib(0.25, 24564, 0) == 6141
    assert share_limit_mib(0.01, 4096, 500) == pytest.approx(0.05 * 40.96)  # never zero or below


@pytest.mark.parametrize("error", ["config", "data", "nonfinite", "gpu_memory"])
def test_a_recorded_failure_comes_back_as_the_same_error(tmp_path, error):
    from trainables.errors import ConfigError, DataError, NonFiniteLossError
    from trainables.gpu_memory import gpu_out_of_memory
    from tune.launch.trial_record import TrialRecord

    original = {"config": ConfigError("hparams.step_size: 5 never acts in a run of 2 epochs"),
                "data": DataError("a.json: image 3: missing file"),
                "nonfinite": NonFiniteLossError(1, 3, {"loss": float("nan"), "loss_classifier": 2.5}),
                # a trial that outgrew its share outgrows it again: a retry re-raises at once
                "gpu_memory": gpu_out_of_memory(2, fraction=0.5, card_mib=24000, held_mib=11990)}[error]
    (tmp_path / "run").mkdir()
    record = TrialRecord(str(tmp_path / "run"), "trial_00000")
    assert record.recorded_failure() is None and record.attempts() == []
    assert record.start(node_id="n1", checkpoint=None, refused=None) == 1
    record.record_failure(original)
    again = TrialRecord(str(tmp_path / "run"), "trial_00000").recorded_failure()  # as a retry on another node reads it
    assert type(again) is type(original) and str(again) == str(original)
    assert record.start(node_id="n2", checkpoint="checkpoint_000000", refused=type(again).__name__) == 2
    assert [(a["attempt"], a["node_id"], a["refused"]) for a in record.attempts()] == [
        (1, "n1", None), (2, "n2", type(original).__name__)]
