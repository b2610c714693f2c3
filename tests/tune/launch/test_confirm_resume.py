"""A real `boxtune sweep` with a confirmation stage, SIGKILLed during the stage, then `boxtune resume`:
finished seeds are not trained again, and the search is not touched."""

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
from shared_run import (
    descendants,
    end_processes,
    load_study,
    study_by_ray_trial,
    trial_attempts,
    trial_dirs,
    trial_epochs,
)

BOXTUNE = [sys.executable, "-m", "tune.cli"]
EPOCHS, SEEDS = 2, 2


def _stage(run: Path) -> tuple[dict[str, bytes], dict[str, list[int]]]:
    """(finished confirmation trial folder -> result.json bytes, unfinished one -> its epochs so far)."""
    finished, partial = {}, {}
    for trial in trial_dirs(run / "confirm") if (run / "confirm").is_dir() else []:
        seen = trial_epochs(trial)
        if seen and seen[-1] == EPOCHS:
            finished[trial.name] = (trial / "result.json").read_bytes()
        elif seen:
            partial[trial.name] = seen
    return finished, partial


def test_a_kill_during_the_confirmation_stage_resumes_without_retraining_finished_seeds(tmp_path, tiny_demo):
    cfg = tiny_sweep("confirm_resume", tiny_demo, tmp_path / "runs", training={"epochs": EPOCHS, "seed": 0},
                     search={"space": "quick", "num_trials": 1, "sampler": "random", "seed": 0,
                             "confirm": {"top": 1, "seeds": SEEDS}})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "runs" / "confirm_resume"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}  # this checkout's boxtune

    # `boxtune sweep`, SIGKILLed once one seed has finished and the next has reported an epoch, not its last
    log_file = tmp_path / "sweep.log"
    with log_file.open("w") as log:
        driver = subprocess.Popen([*BOXTUNE, "sweep", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=tmp_path)
        ray_processes: set[int] = set()
        try:
            deadline = time.monotonic() + 400
            while not all(_stage(run)):
                assert driver.poll() is None, log_file.read_text()[-3000:]
                assert len(_stage(run)[0]) < SEEDS, "every seed finished before the kill"
                if time.monotonic() > deadline:
                    pytest.fail("the confirmation stage reached no seed mid-way")
                time.sleep(0.2)
            ray_processes = descendants(driver.pid)
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            end_processes(ray_processes | descendants(driver.pid))
    finished, partial = _stage(run)
    assert len(finished) == 1 and partial, (sorted(finished), partial)
    search = {trial.name: (trial / "result.json").read_bytes() for trial in trial_dirs(run)}
    assert len(search) == 1 and all(trial_epochs(run / name) == [1, 2] for name in search)

    out = subprocess.run([*BOXTUNE, "resume", str(run)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[out.stderr.rfind("Traceback"):][-5000:]
    assert "resuming the confirmation stage" in out.stdout
    after, unfinished = _stage(run)
    assert len(after) == SEEDS and not unfinished  # K x N seeds, each once
    for name, content in finished.items():  # the finished seed was not trained again: byte for byte, one attempt
        assert after[name] == content
        assert len(trial_attempts(run / "confirm" / name)) == 1
    for trial in trial_dirs(run / "confirm"):  # each epoch reported once, in order
        assert trial_epochs(trial) == list(range(1, EPOCHS + 1)), (trial.name, trial_epochs(trial))
    assert {trial.name: (trial / "result.json").read_bytes() for trial in trial_dirs(run)} == search  # search untouched
    # the Optuna study holds the search's one trial: the seeds are never told to it
    assert len(load_study(run).trials) == 1 and len(study_by_ray_trial(run)[0]) == 1
    seeds = sorted(json.loads((t / "params.json").read_text())["confirm_seed"] for t in trial_dirs(run / "confirm"))
    assert seeds == [1, 2]
    leader = pq.read_table(run / "ranking.parquet").to_pylist()[0]
    assert leader["seeds"] == SEEDS + 1 and leader["rank"] == 1
