"""Interrupt a sweep as a user would (Ctrl-C on a real process) and resume it with `boxtune resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import tiny_sweep

BOXTUNE = [sys.executable, "-m", "tune.cli"]


def _finished_trials(run: Path, epochs: int) -> dict[str, bytes]:
    """trial folder -> its result.json bytes, for trials that reported their last epoch."""
    done = {}
    for result in run.glob("*/result.json"):
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        if lines and json.loads(lines[-1]).get("epoch") == epochs:
            done[result.parent.name] = result.read_bytes()
    return done


def test_interrupt_then_resume_runs_each_trial_once(tmp_path, tiny_demo):
    epochs, trials = 2, 4
    cfg = tiny_sweep("resumable", tiny_demo, tmp_path / "runs", training={"epochs": epochs, "seed": 0},
                     search={"space": "quick", "num_trials": trials, "sampler": "tpe", "seed": 1})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "runs" / "resumable"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([*BOXTUNE, "sweep", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not _finished_trials(run, epochs) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        before = _finished_trials(run, epochs)
        assert before, "no trial finished within 300 s"
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
        log.close()
    before = _finished_trials(run, epochs)  # anything that finished during shutdown counts as finished too
    assert len(before) < trials, "the sweep finished before it could be interrupted"

    out = subprocess.run([*BOXTUNE, "resume", str(run)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = _finished_trials(run, epochs)
    assert len(after) == trials, sorted(after)
    # finished trials were not re-run: their result files are byte-for-byte what they were
    for name, content in before.items():
        assert after[name] == content
    # every trial reported each epoch exactly once, in order: a list, not a set (a trial restarted
    # from scratch, or one that ran an epoch twice, would pass a comparison of sets)
    for name in after:
        epochs_seen = [json.loads(ln)["epoch"] for ln in (run / name / "result.json").read_text().splitlines() if ln.strip()]
        assert epochs_seen == list(range(1, epochs + 1)), (name, epochs_seen)
    table = subprocess.run([*BOXTUNE, "report", str(run), "--format", "json"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    ranked = json.loads(table.stdout)["trials"]
    assert len(ranked) == trials and all(t["status"] == "TERMINATED" for t in ranked)
