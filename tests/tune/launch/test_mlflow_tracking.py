"""``tracking.mlflow``: a real ``mlflow server`` (SQLite) on loopback, tiny sweeps logging to it, the
runs read back through MLflow's API; a resume that logs into the same runs; a server stopped mid-sweep."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_sweep
from shared_run import result_rows, trial_dirs

from trainables.errors import ConfigError
from tune.config import SweepConfig, load_config
from tune.launch.mlflow_tracking import (
    BEST_TAG,
    KIND_TAG,
    NOISE_TAG,
    RANK_TAG,
    RUN_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    mlflow_key,
)
from tune.run.layout import RANKING_FILE
from tune.workflow import resume_sweep, run_sweep

mlflow = pytest.importorskip("mlflow")  # the dev extra installs it; a plain install may not

_STARTUP_S = 180.0  # an MLflow server imports a lot; on two busy cores it takes ~45 s
_LOGGER = "tune.launch.mlflow_tracking"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite store; the process group it leads is stopped at the end
    (``test_a_server_stopped_mid_sweep_...`` stops it earlier)."""
    work = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}", "--artifacts-destination", str(work / "artifacts")],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its uvicorn workers: one group
    deadline = time.monotonic() + _STARTUP_S
    while True:
        assert process.poll() is None, (work / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"mlflow server not up in {_STARTUP_S:.0f} s"
        time.sleep(0.5)
    try:
        yield url, process
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started: the server and its workers
        process.wait(timeout=30)


def _client(url: str):
    return mlflow.tracking.MlflowClient(tracking_uri=url)


def _runs(url: str, experiment: str, kind: str):
    client = _client(url)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{kind}'")


def _config(tmp: Path, data: Path, name: str, url: str, *, trials: int) -> SweepConfig:
    return SweepConfig.model_validate(tiny_sweep(
        name, data, tmp / "runs", search={"space": "quick", "num_trials": trials, "sampler": "random", "seed": 0},
        tracking={"mlflow": {"uri": url, "experiment": name}}))


@pytest.fixture(scope="module")
def tracked(server, tmp_path_factory, tiny_demo, ray_local):
    """A two-trial sweep logged to the server, then resumed once (nothing left to run)."""
    url, _ = server
    cfg = _config(tmp_path_factory.mktemp("tracked"), tiny_demo, "tracked", url, trials=2)
    rows = run_sweep(cfg, echo=lambda *_: None)
    run = Path(cfg.storage) / cfg.name
    before = {kind: sorted(r.info.run_id for r in _runs(url, "tracked", kind)) for kind in ("sweep", "trial")}
    before["ended"] = _runs(url, "tracked", "sweep")[0].info.end_time
    resume_sweep(str(run), echo=lambda *_: None)
    return url, cfg, rows, run, before


@pytest.mark.parametrize("name, key", [("AP[cat]", "AP_cat"), ("AR100[traffic light]", "AR100_traffic light"),
                                       ("loss_box_reg", "loss_box_reg"), ("best/AP", "best/AP"), ("AP[a:b]", "AP_a_b")])
def test_metric_names_become_ones_mlflow_takes(name, key):
    from mlflow.utils.validation import _validate_metric_name

    assert mlflow_key(name) == key
    _validate_metric_name(key)  # raises for a name the server refuses


def test_parent_holds_the_config_and_the_ranking(tracked):
    url, cfg, rows, run, _ = tracked
    (parent,) = _runs(url, "tracked", "sweep")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tracked"
    assert parent.data.tags[SWEEP_TAG] == "tracked" and parent.data.tags[RUN_TAG] == str(run)
    params = parent.data.params
    assert params["search.num_trials"] == "2" and params["model.architecture"] == cfg.model.architecture
    assert params["tracking.mlflow.uri"] == url and params["training.epochs"] == "2"
    client = _client(url)
    with open(client.download_artifacts(parent.info.run_id, "ranking.json", str(run.parent))) as src:
        logged = json.load(src)
    assert [r["trial"] for r in logged] == pq.read_table(run / RANKING_FILE).column("trial").to_pylist()
    leader = rows[0]
    assert parent.data.tags[BEST_TAG] == leader["trial"]
    assert parent.data.metrics["best_AP"] == pytest.approx(leader["AP"])
    assert parent.data.metrics["best_AR100"] == pytest.approx(leader["AR100"])


def test_each_trial_is_a_child_run_with_its_params_and_epochs(tracked):
    url, cfg, rows, run, _ = tracked
    (parent,) = _runs(url, "tracked", "sweep")
    children = {r.data.tags[TRIAL_TAG]: r for r in _runs(url, "tracked", "trial")}
    assert sorted(children) == sorted(r["trial"] for r in rows)
    client = _client(url)
    by_trial = {d.name.split("_")[2]: d for d in trial_dirs(run)}  # sweep_trainable_<id>_<number>_...
    for row in rows:
        child = children[row["trial"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags[STATUS_TAG] == "TERMINATED"
        assert child.data.tags[RANK_TAG] == str(row["rank"])
        assert child.data.tags[NOISE_TAG] == str(row["rank"] != 1 and not row["distinguishable"]).lower()
        config = json.loads((by_trial[row["trial"]] / "params.json").read_text())
        assert child.data.params == {k: str(v) for k, v in config.items()}
        results = result_rows(by_trial[row["trial"]])
        assert len(results) == cfg.training.epochs
        for key in ("AP", "AR100", "loss", "AP[circle]", "AR100[triangle]", "best_score"):
            history = client.get_metric_history(child.info.run_id, mlflow_key(key))
            assert [m.step for m in history] == [r["epoch"] for r in results]
            for metric, result in zip(history, results, strict=True):
                if math.isnan(result[key]):
                    assert math.isnan(metric.value)
                else:
                    assert metric.value == pytest.approx(result[key], rel=1e-12)
        assert child.data.metrics["ci_low"] == pytest.approx(row["ci_low"])
        assert child.data.metrics["ci_high"] == pytest.approx(row["ci_high"])
        assert "time_total_s" not in child.data.metrics and "training_iteration" not in child.data.metrics


def test_a_resume_logs_into_the_same_runs(tracked):
    url, _, _, _, before = tracked
    after = {kind: sorted(r.info.run_id for r in _runs(url, "tracked", kind)) for kind in ("sweep", "trial")}
    assert after == {k: v for k, v in before.items() if k != "ended"}
    assert len(after["sweep"]) == 1 and len(after["trial"]) == 2
    (parent,) = _runs(url, "tracked", "sweep")
    assert parent.info.status == "FINISHED" and parent.info.end_time > before["ended"]  # the resume reopened it


def test_tracking_config_is_checked_before_anything_runs(tmp_path):
    data = {"data": {"path": "x"}, "tracking": {"mlflow": {"uri": "http://127.0.0.1:1", "experimnt": "a"}}}
    with pytest.raises(ConfigError, match=r"tracking\.mlflow\.experimnt: unknown key \(did you mean 'experiment'\?\)"):
        load_config(None, SweepConfig, data=data)
    with pytest.raises(ConfigError, match=r"tracking\.mlflow\.uri: must not be empty"):
        load_config(None, SweepConfig, data={"data": {"path": "x"}, "tracking": {"mlflow": {"uri": " "}}})
    assert SweepConfig.model_validate({"data": {"path": "x"}}).tracking.mlflow.uri is None  # off unless set


def test_a_server_stopped_mid_sweep_leaves_one_line_and_the_sweep_finishes(server, tmp_path, tiny_demo, ray_local,
                                                                          caplog):
    url, process = server
    cfg = _config(tmp_path, tiny_demo, "stopped", url, trials=1)
    stopped = threading.Event()

    def stop_after_first_epoch():
        client = _client(url)
        while not stopped.is_set():
            try:
                exp = client.get_experiment_by_name("stopped")
                runs = [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'trial'")
                if runs and client.get_metric_history(runs[0].info.run_id, "AP"):
                    _stop(process)
                    stopped.set()
                    return
            except Exception:  # noqa: BLE001 - the server may be busy; ask again
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=stop_after_first_epoch, daemon=True)
    watcher.start()
    with caplog.at_level(logging.WARNING, logger=_LOGGER):
        started = time.monotonic()
        rows = run_sweep(cfg, echo=lambda *_: None)
        seconds = time.monotonic() - started
    stopped.set()
    watcher.join(timeout=30)
    assert process.poll() is not None, "the server was never stopped: the sweep ended before its first epoch was logged"
    (row,) = rows
    assert row["status"] == "TERMINATED" and row["epochs"] == 2 and row["error"] is None
    lines = [r.getMessage() for r in caplog.records if r.name == _LOGGER]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"MLflow tracking off for the rest of this sweep: {url} did not take")
    assert "Connection refused" in lines[0] and "the sweep goes on" in lines[0] and "\n" not in lines[0]
    assert seconds < 300
