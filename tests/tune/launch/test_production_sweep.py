"""What the production sweep does end to end: ASHA stops trials at its rung; ``boxtune demo`` runs.

The shared run (tests/shared_run.py) is ``boxtune sweep`` with ASHA (grace_period 1, reduction
factor 2) over two epochs, so ASHA's one rung is at epoch 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
from shared_run import EPOCHS, result_rows, trial_dirs

from trainables.objective import SCORE as METRIC


def test_asha_stopped_a_trial_at_its_rung(shared_run):
    # the point rule: the suite's tiny models score AP near 0, where every interval reaches every
    # cutoff and the default rule (stop_on: interval, tests/tune/launch/test_evidence.py) stops nothing
    assert shared_run.config["scheduler"] == {"name": "asha", "grace_period": 1, "reduction_factor": 2,
                                              "stop_on": "score"}
    runs = {d.name: result_rows(d) for d in trial_dirs(shared_run.run)}
    trained = {name: rows for name, rows in runs.items() if rows}
    stopped = {name: rows for name, rows in trained.items() if len(rows) < EPOCHS}
    went_on = {name: rows for name, rows in trained.items() if len(rows) == EPOCHS}
    assert stopped and went_on, {n: len(r) for n, r in runs.items()}
    for rows in stopped.values():
        # stopped at the rung (epoch 1), below a trial that reached the rung and went on
        assert [r["epoch"] for r in rows] == [1]
        assert rows[0][METRIC] < max(r[0][METRIC] for r in went_on.values())
    # a trial stopped by ASHA is not an error: it ends TERMINATED and is ranked with the epochs it ran
    ranking = {r["trial"]: r for r in pq.read_table(shared_run.run / "ranking.parquet").to_pylist()}
    for rows in stopped.values():
        row = ranking[rows[0]["trial_id"]]
        assert row["status"] == "TERMINATED" and row["epochs"] == 1 and row["best_epoch"] == 1


def test_boxtune_demo_runs_end_to_end(tmp_path):
    # the real command on a smaller demo dataset (hidden flags): 24 images of 96 px, 2 trials of 1 epoch
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "tune.cli", "demo", "--out", str(tmp_path / "demo"), "--trials", "2",
                          "--epochs", "1", "--images", "24", "--image-size", "96"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"generating the demo dataset in {tmp_path / 'demo' / 'data'}" in out.stdout
    annotations = json.loads((tmp_path / "demo" / "data" / "annotations.json").read_text())
    assert len(annotations["images"]) == 24 and {i["width"] for i in annotations["images"]} == {96}
    run = tmp_path / "demo" / "runs" / "demo"
    ranking = pq.read_table(run / "ranking.parquet").to_pylist()
    assert len(ranking) == 2 and all(r["status"] == "TERMINATED" and r["epochs"] == 1 for r in ranking)
    assert out.stdout.count("TERMINATED") >= 2  # the ranked table is printed
    assert f"next: boxtune report {run} --plot" in out.stdout
