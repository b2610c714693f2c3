"""TensorBoard: trial events read back with TensorBoard's reader, the sweep's HParams experiment, the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from shared_run import NUM_TRIALS
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import metadata as hp_metadata

from trainables.errors import BoxtuneError
from trainables.tensorboard import TrialWriter
from tune.results.tensorboard import start_tensorboard, write_hparams_experiment
from tune.run import load_sweep
from tune.run.layout import HPARAMS_EVENTS_SUFFIX as EVENTS_SUFFIX

CHROMIUM = Path("/usr/bin/chromium")
EPOCHS = 3
HPARAMS = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "milestones": [8, 11]}


def epoch_metrics(epoch: int, lr: float) -> dict[str, float]:
    """Plausible numbers of one epoch, every key TrialWriter knows."""
    ap = 0.1 * epoch + lr
    return {"epoch": epoch, "loss": 1.5 / epoch, "loss_classifier": 0.5 / epoch, "loss_box_reg": 0.4 / epoch,
            "loss_objectness": 0.3 / epoch, "loss_rpn_box_reg": 0.3 / epoch, "AP": ap, "AP50": ap + 0.2,
            "AP75": ap + 0.05, "APs": float("nan"), "APm": ap, "APl": ap + 0.1, "AR1": ap, "AR10": ap + 0.1,
            "AR100": ap + 0.15, "ARs": float("nan"), "ARm": ap + 0.1, "ARl": ap + 0.2, "lr": lr / epoch,
            "images_per_s": 12.5 + epoch, "best_AP": ap, "best_AR100": ap + 0.15}


def _val_set():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[4.0, 4.0, 30.0, 40.0]])
    return [(torch.rand(3, 48, 64, generator=g), {"boxes": boxes, "labels": torch.tensor([1]), "image_id": i})
            for i in (1, 2)]


def _detections():
    return {i: {"boxes": torch.tensor([[5.0, 6.0, 28.0, 38.0], [10.0, 10.0, 20.0, 20.0]]),
                "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.2])} for i in (1, 2)}


def test_trial_events_read_back_with_tensorboards_reader(tmp_path):
    writer = TrialWriter(tmp_path, hparams=HPARAMS, image_every=1, image_count=2, class_names=["cat", "dog"])
    written = [epoch_metrics(e, HPARAMS["lr"]) for e in range(1, EPOCHS + 1)]
    for metrics in written:
        writer.epoch(metrics, val_set=_val_set(), detections=_detections())
    writer.close()
    acc = ea.EventAccumulator(str(tmp_path), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/loss", "loss/loss_box_reg", "coco/AP", "coco/AR100", "train/lr", "train/images_per_s",
            "best/AP", "best/AR100"} <= set(tags["scalars"])
    for tag, key in (("coco/AP", "AP"), ("loss/loss", "loss"), ("train/lr", "lr"), ("best/AR100", "best_AR100")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([m[key] for m in written], rel=1e-6)  # float32
    assert all(e.value != e.value for e in acc.Scalars("coco/APs"))  # NaN where no small object exists
    images = acc.Images("val/predictions")
    assert [i.step for i in images] == [1, 2, 3] and images[0].width > 64 and images[0].height >= 48
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
    session = hp_metadata.parse_session_start_info_plugin_data(content)
    assert session.hparams["optimizer"].string_value == "sgd"
    assert session.hparams["lr"].number_value == 0.01 and session.hparams["momentum"].number_value == 0.9
    assert session.hparams["nesterov"].number_value == 1.0  # torch writes booleans as numbers
    assert session.hparams["milestones"].string_value == "[8, 11]"


# the shared production sweep (tests/shared_run.py): every sampled key of any trial; the diverging
# trial has only optimizer, lr and batch_size, and no epoch (so no scalars)
UNION = {"optimizer", "lr", "nesterov", "hflip_p", "freeze_depth", "batch_size"}
TRAINED = NUM_TRIALS - 1  # trials that reported epochs


@pytest.fixture(scope="module")
def sweep(shared_run) -> str:
    """The suite's ``boxtune sweep`` run: every trial logged with TrialWriter, under the production Tuner."""
    return str(shared_run.run)


def _configs(run: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(run).glob("*/params.json")]


def _root_experiment(run: str):
    acc = ea.EventAccumulator(run)  # the root run only: event files directly in the folder
    acc.Reload()
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.EXPERIMENT_TAG]
    return hp_metadata.parse_experiment_plugin_data(content)


def test_experiment_lists_every_hyperparameter_of_any_trial(sweep):
    path = write_hparams_experiment(load_sweep(sweep))
    assert Path(path).parent == Path(sweep) and path.endswith(EVENTS_SUFFIX)
    experiment = _root_experiment(sweep)
    infos = {h.name: h for h in experiment.hparam_infos}
    assert set(infos) == UNION
    assert [v.string_value for v in infos["optimizer"].domain_discrete.values] == ["adam", "sgd"]
    nesterov = sorted({float(c["nesterov"]) for c in _configs(sweep) if "nesterov" in c})  # as torch writes booleans
    assert [v.number_value for v in infos["nesterov"].domain_discrete.values] == nesterov and nesterov
    assert not infos["lr"].HasField("domain_discrete")
    assert [m.name.tag for m in experiment.metric_infos] == ["best/score", "best/AP", "best/AR100", "coco/AP"]


def test_rewriting_replaces_the_experiment_file(sweep):
    first = write_hparams_experiment(load_sweep(sweep))
    second = write_hparams_experiment(load_sweep(sweep))
    assert first != second  # a new file each time (TensorBoard follows the newest event file)
    assert [p.name for p in Path(sweep).glob(f"*{EVENTS_SUFFIX}")] == [Path(second).name]
    assert {h.name for h in _root_experiment(sweep).hparam_infos} == UNION


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def _wait_for_runs(url: str, count: int, seconds: float = 60.0) -> dict:
    import time

    deadline = time.monotonic() + seconds
    while True:
        tags = _get(url + "data/plugin/scalars/tags")
        if len(tags) >= count or time.monotonic() > deadline:
            return tags
        time.sleep(0.5)


def test_tensorboard_serves_scalars_and_the_sweep_experiment(sweep):
    write_hparams_experiment(load_sweep(sweep))
    process, url = start_tensorboard(sweep, host="127.0.0.1", port=_free_port())
    try:
        assert url.startswith("http://127.0.0.1:")
        tags = _wait_for_runs(url, TRAINED)
        trial_runs = [run for run in tags if "best/AP" in tags[run]]
        assert len(trial_runs) == TRAINED
        assert {"coco/AP", "loss/loss", "train/lr"} <= set(tags[trial_runs[0]])
        experiment = _get(url + "data/plugin/hparams/experiment", {"experimentName": ""})
        # ours, not one of the per-trial experiments Ray Tune's own logger writes into trial folders
        assert {h["name"] for h in experiment["hparamInfos"]} == UNION
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == ["best/score", "best/AP", "best/AR100", "coco/AP"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_busy_port_is_reported(sweep):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(BoxtuneError, match="TensorBoard on http://127.0.0.1:.* exited"):
            start_tensorboard(sweep, port=busy.getsockname()[1])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_serve_blocks_until_interrupted_and_stops_tensorboard(sweep, stop):
    port = _free_port()
    code = f"from tune.results.tensorboard import serve; raise SystemExit(serve({sweep!r}, host='127.0.0.1', port={port}))"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert f"at http://127.0.0.1:{port}/" in line, line + process.stderr.read()
        assert _get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags") is not None
        process.send_signal(stop)  # Ctrl-C, or `kill PID`
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(OSError):  # TensorBoard went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


@pytest.mark.parametrize("view", ["scalars", "hparams"])
def test_dashboards_render_in_a_browser(sweep, tmp_path, view):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    write_hparams_experiment(load_sweep(sweep))
    process, url = start_tensorboard(sweep, port=_free_port())
    try:
        _wait_for_runs(url, TRAINED)
        shot = tmp_path / f"{view}.png"
        subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,900",
                        "--virtual-time-budget=15000", f"{url}#{view}"], check=True, timeout=120, capture_output=True)
        from PIL import Image

        with Image.open(shot) as image:
            assert image.size == (1400, 900)
            assert sum(1 for n in image.convert("L").histogram() if n) > 20  # more than a blank page
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert os.path.getsize(shot) > 10_000
