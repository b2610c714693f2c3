"""The storage checks' decisions, without a cluster: a job's working dir, which nodes are asked, the messages.

The real thing (a job submitted to a head's job server, a node with its own disk at the storage
path) is in ``test_cluster_job.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_MODEL

from tune.config import SweepConfig, load_config
from tune.launch.storage_check import (
    JOB_CONFIG_ENV,
    check_shared_storage,
    job_storage_problem,
    probe_targets,
    unseen_storage_message,
)

USE_INSTEAD = ("use a shared file system mounted at the same path on every node (storage: /mnt/efs/boxtune_runs) "
               "or a bucket URI (storage: s3://my-bucket/boxtune_runs)")
# what Ray's job supervisor puts in a job entrypoint's environment (runtime_env and metadata, as JSON)
JOB_ENV = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"},
                                       "metadata": {"job_submission_id": "raysubmit_X"}})}


@pytest.fixture
def job_dir(tmp_path) -> Path:
    """Where Ray unpacks a job's --working-dir on the head, and the job's cwd."""
    folder = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    folder.mkdir(parents=True)
    return folder


def _sweep_yaml(folder: Path, storage: str, data: str = "/data/raccoon") -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "job", "data": {"path": data}, "model": TINY_MODEL,
                                    "search": {"space": "quick", "num_trials": 2}, "storage": storage}))
    return path


def test_relative_storage_in_a_job_lands_in_its_working_dir_and_is_refused(job_dir):
    cfg = load_config(_sweep_yaml(job_dir, "boxtune_runs"), SweepConfig)  # relative to the config's folder
    assert cfg.storage == str(job_dir / "boxtune_runs")
    assert job_storage_problem(cfg.storage, environ=JOB_ENV, cwd=str(job_dir)) == (
        f"storage: {job_dir / 'boxtune_runs'} is inside the Ray job's working directory {job_dir}, Ray's temporary "
        f"copy of what was submitted, which Ray deletes (a relative storage in a job lands there); {USE_INSTEAD}")


@pytest.mark.parametrize("storage", ["/mnt/efs/boxtune_runs", "s3://my-bucket/boxtune_runs", "gs://b/runs"])
def test_shared_or_bucket_storage_in_a_job_passes(job_dir, storage):
    assert job_storage_problem(storage, environ=JOB_ENV, cwd=str(job_dir)) is None


def test_outside_a_job_the_working_dir_is_the_users(tmp_path):
    # not a job: a storage under the current folder is an ordinary local folder
    assert job_storage_problem(str(tmp_path / "runs"), environ={}, cwd=str(tmp_path)) is None
    # a job without --working-dir: its cwd is not a copy Ray deletes
    no_working_dir = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {}, "metadata": {}})}
    assert job_storage_problem(str(tmp_path / "runs"), environ=no_working_dir, cwd=str(tmp_path)) is None


def test_storage_in_rays_runtime_resources_is_refused_in_or_out_of_a_job(job_dir, tmp_path):
    storage = str(job_dir / "runs")
    assert job_storage_problem(storage, environ={}, cwd=str(tmp_path)) == (
        f"storage: {storage} is inside Ray's temporary runtime-environment files, which Ray deletes "
        f"(a relative storage in a job lands there); {USE_INSTEAD}")


def test_job_env_that_is_not_json_is_not_a_job(tmp_path):
    assert job_storage_problem(str(tmp_path / "runs"), environ={JOB_CONFIG_ENV: "{"}, cwd=str(tmp_path)) is None


def _node(node_id: str, *, cpu: float, gpu: float = 0, alive: bool = True, ip: str = "10.0.0.1") -> dict:
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": ip, "Resources": {"CPU": cpu, "GPU": gpu}}


@pytest.mark.parametrize(
    "cpu, gpu, expected",
    [
        (1, 0, ["cpu2", "gpu1", "gpu_half"]),  # not the driver's node, not the CPU-less head, not the dead node
        (2, 0, ["cpu2"]),
        (1, 1, ["gpu1"]),
        (1, 0.5, ["gpu1", "gpu_half"]),
        (4, 0, []),  # none fits (an autoscaling cluster before its workers): nothing to ask
    ],
)
def test_probe_asks_the_nodes_that_can_hold_a_trial_except_the_drivers(cpu, gpu, expected):
    nodes = [_node("head", cpu=0), _node("driver", cpu=4), _node("cpu2", cpu=2), _node("gpu1", cpu=1, gpu=1),
             _node("gpu_half", cpu=1, gpu=0.5), _node("dead", cpu=8, gpu=8, alive=False)]
    assert probe_targets(nodes, driver_node="driver", cpu=cpu, gpu=gpu) == expected


def test_unseen_nodes_message_names_each_node_and_the_fix():
    assert unseen_storage_message("/data/runs", [("ab12", "10.0.1.23", "")]) == (
        f"storage: /data/runs is not one folder shared by every node: a file written there on this node is not there "
        f"on 1 node that can run trials: ab12 at 10.0.1.23; {USE_INSTEAD}")
    two = unseen_storage_message("/data/runs", [("ab12", "10.0.1.23", ""), ("cd34", "10.0.1.24", "no answer within 60 s")])
    assert "on 2 nodes that can run trials: ab12 at 10.0.1.23, cd34 at 10.0.1.24 (no answer within 60 s); " in two


def test_one_node_ray_asks_nobody_and_writes_nothing(ray_local, tmp_path):
    # the local Ray's one node is the driver's: no marker, no folder, no task
    storage = tmp_path / "not_yet"
    check_shared_storage(str(storage), cpu=1, gpu=0)
    assert not storage.exists()


def test_cli_sweep_in_a_job_with_relative_storage_exits_2_before_reading_data(job_dir):
    """``boxtune sweep`` as a job's entrypoint runs it (the job's env, its working dir as cwd), against
    a dataset that does not exist: the storage refusal comes first, and nothing is written."""
    _sweep_yaml(job_dir, "boxtune_runs", data=str(job_dir / "no_such_dataset"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(JOB_ENV, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "tune.cli", "sweep", "sweep.yaml"], capture_output=True, text=True,
                         env=env, cwd=job_dir, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"boxtune: error: storage: {job_dir / 'boxtune_runs'} is inside the Ray job's working directory {job_dir}, "
        f"Ray's temporary copy of what was submitted, which Ray deletes (a relative storage in a job lands there); "
        f"{USE_INSTEAD}"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["sweep.yaml"]
