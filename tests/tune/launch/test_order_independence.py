"""The same seeded sweep gives the same answer whatever order its results arrive in, and after a kill.

``scheduler.name: halving`` (tune.launch.halving) against forced arrival orders: a 4-trial sweep,
2 at a time, one rung (epoch 1 of 2), run with the first trial's rung report held back until the
second's is sent and then the other way round, so that different trials reach the rung first and different trials go on from it
without a pause. Compared by creation number: the sampled configs, which trials stopped where, and
every epoch's AP and score, exactly, and the Optuna study each leaves in ``optuna.journal``. Then
the same sweep one trial at a time, its driver SIGKILLed while trials wait at the rung, continued
with ``boxtune resume``.

With ``scheduler.name: asha`` the same two orders stop different trials (ASHA decides a rung as
each result arrives); docs/design.md gives the run that showed it.

The searcher's half is checked without Ray too: a batch is sampled knowing exactly the batches
two back, told in creation order, whichever trial ended first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_sweep
from shared_run import descendants, end_processes, result_rows, study_by_ray_trial, trial_dirs

from trainables.objective import BEST_SCORE
from tune.run import load_sweep
from tune.run.study import CREATION_NUMBER

DRIVER = Path(__file__).with_name("delayed_sweep.py")
EPOCHS, TRIALS = 2, 4
# creation number -> the trial whose rung report it waits for (delayed_sweep.py). Two run at a
# time, so trials 1 and 2 reach the rung first, in either order, and the last of 3 and 4 to get
# there goes on without a pause
FIRST_LATE = {1: 2, 3: 4}  # arrival 2, 1, 4, 3
LAST_LATE = {2: 1, 4: 3}  # arrival 1, 2, 3, 4


def _config(tmp: Path, data: Path, name: str, *, max_concurrent: int = 2) -> Path:
    cfg = tiny_sweep(name, data, tmp / "runs", training={"epochs": EPOCHS, "seed": 0},
                     search={"space": "quick", "num_trials": TRIALS, "sampler": "tpe", "seed": 0},
                     # the point rule, which stops trials at the tiny models' AP near 0 (stop_on: interval would not)
                     scheduler={"name": "halving", "grace_period": 1, "reduction_factor": 2, "batch": 4,
                                "stop_on": "score"},
                     max_concurrent=max_concurrent)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1"}


def _run(config: Path, waits: dict[int, int]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(DRIVER), str(config), json.dumps(waits)], capture_output=True,
                         text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def _outcome(run: Path) -> dict[int, dict]:
    """Per creation number: status, sampled config, and each epoch's (epoch, AP, AR100, score)."""
    view = load_sweep(str(run))
    return {t.number: {"status": t.status, "config": t.config,
                       "epochs": [(int(r["epoch"]), r["AP"], r["AR100"], r["score"]) for r in t.history]}
            for t in view.trials}


def _study(run: Path) -> dict[int, tuple[int, float, dict]]:
    """Per creation number, its Optuna trial: (number in the study, value, params). Fails on a
    trial left RUNNING and on two Optuna trials for one Ray trial (``shared_run.study_by_ray_trial``)."""
    by_id, _ = study_by_ray_trial(run)
    view = load_sweep(str(run))
    assert sorted(by_id) == sorted(t.trial_id for t in view.trials)
    out = {}
    for t in view.trials:
        trial = by_id[t.trial_id]
        assert trial.user_attrs[CREATION_NUMBER] == t.number
        assert trial.params == {name: t.config[name] for name in trial.params}
        assert trial.value == t.history[-1][BEST_SCORE]  # told its best score when it ended
        out[t.number] = (trial.number, trial.value, trial.params)
    return out


def _order(run: Path) -> list[int]:
    """Creation numbers in the order their epoch-1 result was written."""
    first = {}
    for trial in trial_dirs(run):
        rows = result_rows(trial)
        number = int(trial.name.split("_")[3])
        first[number] = next(r["timestamp"] + r.get("time_this_iter_s", 0) for r in rows if r["epoch"] == 1)
    return sorted(first, key=first.get)


@pytest.fixture(scope="module")
def first_late(tmp_path_factory, tiny_demo) -> Path:
    tmp = tmp_path_factory.mktemp("first_late")
    _run(_config(tmp, tiny_demo, "order"), FIRST_LATE)
    return tmp / "runs" / "order"


def test_a_forced_arrival_order_changes_nothing(first_late, tiny_demo, tmp_path):
    _run(_config(tmp_path, tiny_demo, "order"), LAST_LATE)
    second = tmp_path / "runs" / "order"
    orders = _order(first_late), _order(second)
    assert orders[0][:2] != orders[1][:2] and orders[0][-1] != orders[1][-1], orders  # the waits did reorder
    one, two = _outcome(first_late), _outcome(second)
    assert sorted(one) == list(range(1, TRIALS + 1))
    assert one == two
    # one rung, at epoch 1: the best ceil(4 / 2) of the batch go on to epoch 2, the others stop there
    assert sorted(len(t["epochs"]) for t in one.values()) == [1, 1, 2, 2]
    assert all(t["status"] == "TERMINATED" for t in one.values())
    going_on = {n for n, t in one.items() if len(t["epochs"]) == 2}
    at_rung = {n: t["epochs"][0][3] for n, t in one.items()}
    assert going_on == set(sorted(at_rung, key=lambda n: (-at_rung[n], n))[:2])
    # the Optuna study on disk: asked in creation order, the same in both runs
    study = _study(first_late)
    assert [study[n][0] for n in sorted(study)] == list(range(TRIALS)) and study == _study(second)


def test_one_at_a_time_killed_at_the_rung_and_resumed_changes_nothing(first_late, tiny_demo, tmp_path):
    config = _config(tmp_path, tiny_demo, "order", max_concurrent=1)
    run = tmp_path / "runs" / "order"
    log = tmp_path / "killed.log"

    def waiting_at_rung() -> int:
        """How many trials have reported the rung epoch (while fewer than all, they wait there)."""
        return sum(any(r["epoch"] == 1 for r in result_rows(t)) for t in trial_dirs(run)) if run.is_dir() else 0

    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, str(DRIVER), str(config), json.dumps(LAST_LATE)], stdout=out,
                                  stderr=subprocess.STDOUT, env=_env())
        ray_processes: set[int] = set()
        try:
            deadline = time.monotonic() + 300
            while waiting_at_rung() < 2:
                assert driver.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no two trials reached the rung in 300 s"
                time.sleep(0.2)
            time.sleep(1.0)  # let Tune snapshot the pause; the kill lands before the rung is decided
            assert waiting_at_rung() < TRIALS
            ray_processes = descendants(driver.pid)
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            end_processes(ray_processes | descendants(driver.pid))
    resumed = subprocess.run([sys.executable, "-m", "tune.cli", "resume", str(run)], capture_output=True, text=True,
                             env=_env(), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert _outcome(run) == _outcome(first_late)
    # one study across the kill, no trial left RUNNING or told twice, each told what the run never
    # killed told it; a trial asked after the last snapshot is FAIL (forgotten), so Optuna's numbers
    # may run past the creation numbers
    study = _study(run)
    assert {n: (value, params) for n, (_, value, params) in study.items()} == {
        n: (value, params) for n, (_, value, params) in _study(first_late).items()}
