"""Stop a sweep as users do, on real processes, and resume it with `boxtune resume`, twice:

1. Ctrl-C (SIGINT) on `boxtune sweep` after its first trial finished: Tune saves its state and stops;
2. `boxtune resume`, SIGKILLed (a crashed terminal, a killed job) with a trial mid-way;
3. `boxtune resume` again, to the end.

Nothing either stop did is lost or done twice: finished trials are not re-run, a trial stopped
mid-way goes on from its checkpoint, and the searcher's history survives both: the Optuna study in
``optuna.journal`` ends with one trial per Ray trial and none left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, tiny_sweep
from optuna.trial import TrialState
from shared_run import (
    descendants,
    end_processes,
    result_rows,
    study_by_ray_trial,
    trial_attempts,
    trial_dirs,
    trial_epochs,
)

from tune.run import load_sweep
from tune.run.study import CREATION_NUMBER

BOXTUNE = [sys.executable, "-m", "tune.cli"]


def _progress(run: Path, epochs: int) -> tuple[dict[str, bytes], dict[str, list[int]]]:
    """(finished trial folder -> result.json bytes, unfinished folder -> its epochs so far)."""
    finished, partial = {}, {}
    for trial in trial_dirs(run) if run.is_dir() else []:
        seen = trial_epochs(trial)
        if seen and seen[-1] == epochs:
            finished[trial.name] = (trial / "result.json").read_bytes()
        elif seen:
            partial[trial.name] = seen
    return finished, partial


def _wait_for(proc: subprocess.Popen, log: Path, ready, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        if ready():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {seconds:.0f} s")


def test_interrupt_resume_kill_resume_runs_each_trial_and_epoch_once(tmp_path, tiny_demo):
    epochs, trials = 2, 4
    cfg = tiny_sweep("resumable", tiny_demo, tmp_path / "runs", training={"epochs": epochs, "seed": 0},
                     search={"space": "quick", "num_trials": trials, "sampler": "tpe", "seed": 1})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "runs" / "resumable"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}  # this checkout's boxtune

    # 1. `boxtune sweep`, Ctrl-C once a trial has finished
    first = tmp_path / "first.log"
    with first.open("w") as log:
        proc = subprocess.Popen([*BOXTUNE, "sweep", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path)
        try:
            _wait_for(proc, first, lambda: _progress(run, epochs)[0], "no trial finished")
            # `boxtune status` from another terminal while the sweep runs
            status = subprocess.run([*BOXTUNE, "status", str(run)], capture_output=True, text=True, env=env,
                                    timeout=120)
            assert status.returncode == 0, status.stderr
            assert f"trials: {trials} asked" in status.stdout and "best so far: trial " in status.stdout, status.stdout
            done = int(status.stdout.split(" asked, ")[1].split(" done")[0])
            assert done < trials  # Tune's state file may lag the trial that just finished by a snapshot
            running = int(status.stdout.split(" done, ")[1].split(" running")[0])
            assert done + running >= 1  # a trial that has reported is counted as started, not pending
            proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    interrupted, interrupted_partial = _progress(run, epochs)  # what finished during shutdown counts too
    assert len(interrupted) + len(interrupted_partial) < trials, "the sweep started every trial before Ctrl-C"
    attempts_at_interrupt = {trial.name: len(trial_attempts(trial)) for trial in trial_dirs(run)}

    # 2. `boxtune resume`, SIGKILLed once a trial it started has reported its first epoch, not its last
    second = tmp_path / "second.log"

    def a_new_trial_mid_way() -> bool:
        return bool(set(_progress(run, epochs)[1]) - set(interrupted_partial))

    with second.open("w") as log:
        driver = subprocess.Popen([*BOXTUNE, "resume", str(run)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=tmp_path)
        ray_processes: set[int] = set()
        try:
            _wait_for(driver, second, a_new_trial_mid_way, "the resumed sweep started no further trial")
            ray_processes = descendants(driver.pid)
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            end_processes(ray_processes | descendants(driver.pid))
    before, killed = _progress(run, epochs)
    killed = {name: seen for name, seen in killed.items() if name not in interrupted_partial}
    assert killed, "the kill did not land mid-trial"
    assert all(before[name] == content for name, content in interrupted.items())
    # Ray appends a result to result.json a moment before its experiment snapshot records the
    # result's checkpoint; a kill in between leaves the file an epoch ahead of the snapshot. Leave
    # every killed trial in that state: its next epoch already written, its checkpoint older.
    for name, seen in killed.items():
        ahead = {**result_rows(run / name)[-1], "epoch": seen[-1] + 1, "training_iteration": seen[-1] + 1}
        with (run / name / "result.json").open("a") as out:
            out.write(json.dumps(ahead) + "\n")

    # 3. `boxtune resume` to the end
    out = subprocess.run([*BOXTUNE, "resume", str(run)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[out.stderr.rfind("Traceback"):][-5000:]
    after, unfinished = _progress(run, epochs)
    # each trial asked for exists once, and the searcher's history survived: exactly `trials` trials
    assert len(trial_dirs(run)) == trials and len(after) == trials and not unfinished, sorted(after)
    for name, content in before.items():  # finished trials were not re-run: byte for byte what they were
        assert after[name] == content
    # every trial reported each epoch exactly once, in order: a list, not a set (a trial restarted
    # from scratch, or one that ran an epoch twice, would pass a comparison of sets)
    for trial in trial_dirs(run):
        assert trial_epochs(trial) == list(range(1, epochs + 1)), (trial.name, trial_epochs(trial))
    for name, seen in killed.items():  # the killed trial went on from its checkpoint, not from epoch 1
        attempts = trial_attempts(run / name)
        # one attempt per driver that ran it: the resumed one started from scratch or from an
        # earlier checkpoint, the last one from the checkpoint of the epoch the kill left
        assert len(attempts) == attempts_at_interrupt.get(name, 0) + 2, attempts
        assert attempts[-1]["checkpoint"] is not None, attempts
        assert result_rows(run / name)[-1]["iterations_since_restore"] == epochs - len(seen)
    view = load_sweep(str(run))
    assert len(view.trials) == trials and all(t.status == "TERMINATED" for t in view.trials)
    assert all([int(r["epoch"]) for r in t.history] == list(range(1, epochs + 1)) for t in view.trials)
    ranked = pq.read_table(run / "ranking.parquet").to_pylist()
    assert len(ranked) == trials and {r["epochs"] for r in ranked} == {epochs}
    # the study: one Optuna trial per Ray trial, each told its score; one that the kill left
    # behind (asked after Ray's last snapshot) is FAIL, marked forgotten, and none is RUNNING
    studied, forgotten = study_by_ray_trial(run)
    assert sorted(studied) == sorted(r["trial"] for r in ranked)
    for row in ranked:
        assert studied[row["trial"]].user_attrs[CREATION_NUMBER] == row["number"]
        assert studied[row["trial"]].state == TrialState.COMPLETE and studied[row["trial"]].value == row["score"]
    assert {t.user_attrs.get(CREATION_NUMBER) for t in forgotten} <= set(range(1, trials + 1))
    table = subprocess.run([*BOXTUNE, "report", str(run), "--format", "json"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    reported = json.loads(table.stdout)["trials"]
    assert len(reported) == trials and all(t["status"] == "TERMINATED" for t in reported)
