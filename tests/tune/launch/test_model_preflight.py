"""A model section that a trial would refuse stops the sweep before Ray starts, in one line; named
weights come from torch's cache, downloaded once by the driver or refused saying where the file goes.

No test downloads anything: torch's cache is a temporary folder and HTTPS goes to a closed port on
loopback (a real connection refused, where urllib would otherwise reach the network).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_MODEL, tiny_sweep
from torchvision.models import get_model_weights

from trainables.errors import ConfigError
from tune.cli import _failed_sweep_status
from tune.config import SweepConfig
from tune.launch.sweep import check_models
from tune.workflow import run_sweep

ARCH = TINY_MODEL["architecture"]
CLASSES = ["circle", "square", "triangle"]  # the tiny demo's
URL = get_model_weights(ARCH)["DEFAULT"].url
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, so the proxy refuses at once


@pytest.mark.parametrize("model, message", [
    ({"class_map": {"circle": "bearr"}}, "model.class_map: unknown COCO category 'bearr' (closest: 'bear')"),
    ({"class_map": {"circl": "bear"}},
     "model.class_map: 'circl' (did you mean 'circle'?) is not a dataset class; dataset classes: 'circle', "),
    ({"weights": "{tmp}/missing.pth"}, "model.weights: checkpoint file not found: {tmp}/missing.pth"),
    ({"weights": "{tmp}"}, "model.weights: {tmp} is a folder; give the checkpoint file (a .pth or .pt state_dict)"),
    ({"weights": "COCO_V2"}, f"model.weights: unknown weights 'COCO_V2' for {ARCH}; accepted: COCO_V1, DEFAULT"),
])
def test_a_model_a_trial_would_refuse_stops_the_sweep_before_anything_is_written(tmp_path, tiny_demo, model,
                                                                                 message):
    model = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in model.items()}
    cfg = SweepConfig.model_validate(tiny_sweep("refused", tiny_demo, tmp_path / "runs", model={**TINY_MODEL, **model}))
    with pytest.raises(ConfigError) as err:
        run_sweep(cfg, echo=lambda *_: None)
    assert str(err.value).startswith(message.format(tmp=tmp_path)), str(err.value)
    assert not (tmp_path / "runs").exists()


def test_every_architecture_the_space_can_draw_is_checked(tmp_path):
    drawn = [{"model": {**TINY_MODEL, "weights": None}},
             {"model": {**TINY_MODEL, "architecture": "fasterrcnn_resnet50_fpn", "weights": str(tmp_path / "r50.pth")}}]
    with pytest.raises(ConfigError, match=f"checkpoint file not found: {tmp_path / 'r50.pth'}$"):
        check_models(drawn, CLASSES, local=True)
    # on a cluster the file is the workers' to have: only what needs no file is checked
    check_models(drawn, CLASSES, local=False)
    with pytest.raises(ConfigError, match="unknown COCO category 'bearr'"):
        check_models([{"model": {**TINY_MODEL, "class_map": {"circle": "bearr"}}}], CLASSES, local=False)


_PROBE = """
import json, sys
from tune.cli import main
rc = main(sys.argv[1:])
print("PROBE " + json.dumps({"rc": rc, "ray_imported": "ray" in sys.modules}))
"""


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    return {**env, "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": CLOSED, "https_proxy": CLOSED,
            "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_named_weights_that_cannot_download_are_one_line_before_ray(tmp_path, tiny_demo):
    cached = tmp_path / "torch" / "hub" / "checkpoints" / URL.rsplit("/", 1)[1]
    expected = (f"boxtune: error: model.weights: cannot download the DEFAULT weights of {ARCH} from {URL} "
                f"([Errno 111] Connection refused); put the file at {cached}, or set model.weights to a local "
                ".pth file, or to null for random weights")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(tiny_sweep("offline", tiny_demo, tmp_path / "runs",
                                               model={**TINY_MODEL, "weights": "DEFAULT"})))
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"data": {"path": str(tiny_demo), "val_fraction": 0.25, "seed": 0},
                                     "model": {**TINY_MODEL, "weights": "DEFAULT"}, "training": {"epochs": 1}}))
    for argv in (["sweep", str(sweep)], ["train", str(train), "--out", str(tmp_path / "out")]):
        out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                             env=_offline_env(tmp_path), cwd=tmp_path, timeout=120)
        probe = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("PROBE "))[6:])
        assert probe == {"rc": 2, "ray_imported": False}, out.stderr[-3000:]
        assert out.stderr.strip().splitlines()[-1] == expected, out.stderr[-3000:]
    # nothing written: no run folder, no --out folder, no partial download in the cache
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
    assert not cached.exists()


def test_a_sweep_whose_every_trial_failed_exits_1(capsys):
    rows = [{"trial": "a", "status": "ERROR", "error": "NonFiniteLossError: non-finite loss at epoch 1, step 3"},
            {"trial": "b", "status": "ERROR", "error": "ConfigError: model.weights: ..."}]
    assert _failed_sweep_status(rows) == 1
    assert capsys.readouterr().err == ("boxtune: error: all 2 trials failed; trial a: NonFiniteLossError: "
                                       "non-finite loss at epoch 1, step 3\n")
    assert _failed_sweep_status(rows[1:]) == 1
    assert capsys.readouterr().err == "boxtune: error: the one trial failed; trial b: ConfigError: model.weights: ...\n"
    assert _failed_sweep_status([{**rows[0], "status": "TERMINATED"}, rows[1]]) == 0  # one finished: listed, exit 0
    assert _failed_sweep_status([]) == 0


def test_train_checks_the_model_section_its_trial_builds(tmp_path, tiny_demo, capsys):
    # the shared weights name a file that is not there, but this architecture's own section says
    # random weights: the trial needs no file, so nothing is refused and it trains
    from tune.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(tiny_demo), "val_fraction": 0.25, "seed": 0},
        "model": {**TINY_MODEL, "weights": str(tmp_path / "shared.pth"), "by_architecture": {ARCH: {"weights": None}}},
        "training": {"epochs": 1, "seed": 0}, "hparams": {"batch_size": 4}}))
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "checkpoints").is_dir()
