"""A sweep submitted as a Ray job, and storage that is not the same folder on every node.

The ``job`` scenario (``cluster_scenarios.py``, inside a private network namespace) starts a head
with its job server on 127.0.0.1:8265 and token authentication, and submits sweeps with the
``ray job submit`` command that docs/cluster.md shows, read from the page itself. Then it adds a
worker whose storage folder is a tmpfs of its own (a second machine's local disk) and runs
``boxtune sweep --address`` against both nodes, as a client and as a job.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cluster_scenarios import NamespaceUnavailable, run_scenario
from conftest import REPO, TINY_MODEL

CLUSTER_DOC = REPO / "docs" / "cluster.md"
EPOCHS = 1
TRIALS = 2
USE_INSTEAD = ("use a shared file system mounted at the same path on every node (storage: /mnt/efs/boxtune_runs) "
               "or a bucket URI (storage: s3://my-bucket/boxtune_runs)")


def documented_submit() -> list[str]:
    """The ``ray job submit`` command of docs/cluster.md, its continuation lines joined, ``my_sweep/`` as WORKING_DIR."""
    text = CLUSTER_DOC.read_text()
    (command,) = re.findall(r"^ray job submit (?:.*\\\n)*.*$", text, flags=re.M)
    argv = shlex.split(command.replace("\\\n", " "))
    return ["WORKING_DIR" if arg == "my_sweep/" else arg for arg in argv]


def _write_sweep(folder: Path, data: Path, storage: str) -> None:
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "job",
        "data": {"path": str(data), "val_fraction": 0.25, "seed": 0},
        "model": TINY_MODEL,
        "training": {"epochs": EPOCHS, "seed": 0},
        "search": {"space": "quick", "num_trials": TRIALS, "sampler": "random", "seed": 1},
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "retries": 0,
        "storage": storage,
    }))


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_demo):
    work = tmp_path_factory.mktemp("job")
    _write_sweep(work / "job", tiny_demo, str(work / "runs"))
    _write_sweep(work / "job_relative", tiny_demo, "boxtune_runs")  # the sample config's default
    (work / "params.json").write_text(json.dumps({"submit": documented_submit(), "jobs": ["job", "job_relative"],
                                                  "node_local": str(work / "node_local")}))
    try:
        seen = run_scenario("job", work, timeout_s=900)
    except NamespaceUnavailable as err:
        reason = f"multi-node tests need a private network namespace: {err}"
        if os.environ.get("CI") == "true":  # CI must run them: not being able to is a failure there
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return seen, work


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_documented_command_submits_boxtune_sweep():
    argv = documented_submit()
    assert argv[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
    assert argv[argv.index("--working-dir") + 1] == "WORKING_DIR"
    entrypoint = argv[argv.index("--") + 1:]
    assert entrypoint[-4:] == ["sweep", "sweep.yaml", "--address", "auto"] and "boxtune" in entrypoint


@pytest.mark.cluster
def test_sweep_submitted_as_a_job_succeeds_with_results_in_storage(job):
    seen, work = job
    ran = seen["jobs"]["job"]
    assert (ran["submit_rc"], ran["status"], ran["driver_exit_code"]) == (0, "SUCCEEDED", 0), ran["logs"]
    assert ran["entrypoint"] == shlex.join(documented_submit()[documented_submit().index("--") + 1:])
    run = work / "runs" / "job"
    ranking = pq.read_table(run / "ranking.parquet").to_pylist()
    assert [(r["status"], r["epochs"]) for r in ranking] == [("TERMINATED", EPOCHS)] * TRIALS
    results = {p.parent.name: [json.loads(line) for line in p.read_text().splitlines()] for p in run.glob("*/result.json")}
    assert sorted(rows[0]["trial_id"] for rows in results.values()) == sorted(r["trial"] for r in ranking)
    assert all([row["epoch"] for row in rows] == list(range(1, EPOCHS + 1)) for rows in results.values())
    assert json.loads((run / "boxtune.json").read_text())["ray_address"] == "auto"
    assert "sweep job: 2 trials" in ran["logs"]  # the live table reached the job's log


@pytest.mark.cluster
def test_relative_storage_in_a_job_is_refused_in_one_line(job):
    seen, _ = job
    ran = seen["jobs"]["job_relative"]
    assert (ran["submit_rc"], ran["status"], ran["driver_exit_code"]) == (1, "FAILED", 2), ran["logs"]
    assert "Traceback" not in ran["logs"], ran["logs"]
    last = _last_line(ran["logs"])
    assert re.fullmatch(r"boxtune: error: storage: /\S+/runtime_resources/working_dir_files/_ray_pkg_\w+/boxtune_runs "
                        r"is inside the Ray job's working directory /\S+/_ray_pkg_\w+, Ray's temporary copy of what was "
                        r"submitted, which Ray deletes \(a relative storage in a job lands there\); " + re.escape(USE_INSTEAD),
                        last), last
    assert "reading dataset" not in ran["logs"]  # refused before the dataset is read
    # nothing was written in the copies of the two jobs' working dirs but what was submitted
    assert sorted(Path(p).name for p in seen["working_dir_copies"]) == ["sweep.yaml", "sweep.yaml"]


def _own_disk_node(seen) -> str:
    (node,) = [n["node_id"] for n in seen["nodes"] if not n["head"]]
    return node


@pytest.mark.cluster
def test_node_that_does_not_see_storage_is_named_and_nothing_is_written(job):
    seen, work = job
    client = seen["node_local_client"]
    assert client["rc"] == 2 and "Traceback" not in client["output"], client["output"]
    assert _last_line(client["output"]) == (
        f"boxtune: error: storage: {work / 'node_local'} is not one folder shared by every node: a file written there "
        f"on this node is not there on 1 node that can run trials: {_own_disk_node(seen)} at 127.0.0.1; {USE_INSTEAD}")
    assert seen["node_local_left"] == []  # no run folder, no marker left behind


@pytest.mark.cluster
def test_node_local_storage_in_a_job_is_refused(job):
    seen, work = job
    ran = seen["node_local_job"]
    assert (ran["status"], ran["driver_exit_code"]) == ("FAILED", 2), ran["logs"]
    assert _last_line(ran["logs"]).startswith(f"boxtune: error: storage: {work / 'node_local'} is not one folder "
                                              f"shared by every node: ")
    assert f"{_own_disk_node(seen)} at 127.0.0.1; {USE_INSTEAD}" in _last_line(ran["logs"])
