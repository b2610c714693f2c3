"""The suite's one production sweep: ``boxtune sweep`` as a subprocess, read by many tests.

Production settings throughout: the CLI, ``run_sweep``, the production ``_tuner`` (OptunaSearch
with TPE, ASHA with ``grace_period: 1``, checkpoints kept by the ranking key, retries), one local
Ray started by the sweep itself. Five tiny trials of two epochs at 96 px, two at a time:

* the fourth trial Optuna asks for (``trial.number == 3``) trains SGD at lr 10, whose loss turns
  non-finite in epoch 1: with ``retries: 2`` it must still train only once;
* the others draw quick's ranges (plus Nesterov under SGD, a boolean for the HParams
  experiment), so ASHA has real differences to stop trials on at its rung at epoch 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EPOCHS = 2
NUM_TRIALS = 5
DIVERGING_NUMBER = 3  # the Optuna trial number that diverges
RETRIES = 2
KEEP_TRIALS = 2  # checkpoints.keep_trials

SPACE_MODULE = "shared_run_space"
SPACE_SOURCE = textwrap.dedent('''
    """quick's ranges, and one trial that diverges (lr 10 with SGD: the loss is non-finite in epoch 1)."""


    def space(trial):
        if trial.number == 3:
            return {"optimizer": "sgd", "lr": 10.0, "batch_size": 4}
        optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
        if optimizer == "sgd":
            trial.suggest_float("lr", 1e-2, 4e-2, log=True)
            trial.suggest_categorical("nesterov", [False, True])
        else:
            trial.suggest_float("lr", 3e-4, 2e-3, log=True)
        trial.suggest_categorical("hflip_p", [0.0, 0.5])
        trial.suggest_categorical("freeze_depth", [0, 1, 2])
        return {"batch_size": 4}
''')


@dataclass(frozen=True)
class SharedRun:
    run: Path  # the sweep folder: <storage>/<name>
    config: dict[str, Any]  # the sweep YAML as written
    stdout: str
    stderr: str
    seconds: float  # wall time of `boxtune sweep`, Ray start included


def sweep_config(data: Path, storage: Path, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "shared",
        "data": {"path": str(data), "val_fraction": 0.25, "seed": 0},
        "model": model,
        "training": {"epochs": EPOCHS, "seed": 0, "image_log_every": 1, "image_log_count": 2},
        "search": {"space": f"{SPACE_MODULE}:space", "num_trials": NUM_TRIALS, "sampler": "tpe", "seed": 0},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2, "stop_on": "score"},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
        "storage": str(storage),
        "retries": RETRIES,
        # fewer than the trials that report, so tests/tune/launch/test_retention.py sees checkpoints deleted
        "checkpoints": {"keep_trials": KEEP_TRIALS},
    }


def run_shared_sweep(work: Path, data: Path, model: dict[str, Any], repo: Path) -> SharedRun:
    """Write the space and the config into ``work`` and run ``boxtune sweep`` there; fail loudly if it fails."""
    (work / f"{SPACE_MODULE}.py").write_text(SPACE_SOURCE)
    config = sweep_config(data, work / "runs", model)
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(repo)]), "PYTHONUNBUFFERED": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tune.cli", "sweep", str(path)], capture_output=True, text=True,
                         env=env, cwd=work, timeout=900)
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return SharedRun(work / "runs" / "shared", config, out.stdout, out.stderr, seconds)


def result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Ray's result.json of one trial: one row per reported epoch, in the order written."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_dirs(run: Path) -> list[Path]:
    """The run's trial folders (every folder Ray made for a trial has params.json)."""
    return sorted(p.parent for p in run.glob("*/params.json"))


def trial_epochs(trial_dir: Path) -> list[int]:
    """The epochs one trial reported, in the order written (a list: a repeated epoch shows)."""
    return [int(r["epoch"]) for r in result_rows(trial_dir)]


def trial_attempts(trial_dir: Path) -> list[dict[str, Any]]:
    """One row per process that ran the trial (its pid, the checkpoint it started from, a refusal)."""
    from tune.run.layout import ATTEMPTS_FILE

    path = trial_dir / ATTEMPTS_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].startswith(" Z")
    except OSError:
        return False


def end_processes(pids: set[int], seconds: float = 30.0) -> None:
    """Wait for ``pids`` (a killed driver's Ray processes) to go; SIGKILL any that stay."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.5)
    for pid in filter(alive, pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def load_study(run: Path):
    """A sweep's Optuna study as a user opens it: ``optuna.load_study`` on ``<run>/optuna.journal``."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tune.run.layout import STUDY_FILE

    assert (run / STUDY_FILE).is_file(), f"no {STUDY_FILE} in {run}"
    # the study is named after the sweep (its `name`), as is the folder
    return optuna.load_study(study_name=run.name, storage=JournalStorage(JournalFileBackend(str(run / STUDY_FILE))))


def study_by_ray_trial(run: Path) -> tuple[dict[str, Any], list[Any]]:
    """(Ray trial id -> its Optuna trial, the Optuna trials told FAIL on resume as forgotten).

    Fails on an Optuna trial left RUNNING or WAITING, a forgotten one not FAIL, and two Optuna
    trials for one Ray trial or one creation number."""
    import optuna

    from tune.run.study import CREATION_NUMBER, FORGOTTEN, RAY_TRIAL_ID

    trials = load_study(run).trials
    left = [(t.number, t.state.name) for t in trials if not t.state.is_finished()]
    assert not left, f"Optuna trials left unfinished: {left}"
    forgotten = [t for t in trials if FORGOTTEN in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in forgotten)
    kept = [t for t in trials if FORGOTTEN not in t.user_attrs]
    by_id = {t.user_attrs[RAY_TRIAL_ID]: t for t in kept}
    assert len(by_id) == len(kept), sorted(t.user_attrs[RAY_TRIAL_ID] for t in kept)
    assert len({t.user_attrs[CREATION_NUMBER] for t in kept}) == len(kept)
    return by_id, forgotten
