"""`boxtune train` is plain Python: it runs a trial without importing Ray or Optuna.

The offline GPU box has torch and torchvision but neither Ray nor Optuna; a trial must run there
from the checkout with a few small wheels (pydantic, pycocotools).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, TINY_MODEL

_PROBE = """
import json, sys
from tune.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "optuna"))
print("PROBE " + json.dumps({"rc": rc, "heavy": heavy, "torch": "torch" in sys.modules}))
"""


def test_boxtune_train_imports_neither_ray_nor_optuna(tmp_path, tiny_demo):
    cfg = {"data": {"path": str(tiny_demo), "val_fraction": 0.25}, "model": TINY_MODEL,
           "training": {"epochs": 1, "seed": 0}, "hparams": {"batch_size": 4, "lr": 0.01}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = subprocess.run([sys.executable, "-c", _PROBE, "train", str(path), "--out", str(tmp_path / "out"),
                          "--threads", "1", "--device", "cpu"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("PROBE "))[6:])
    assert probe == {"rc": 0, "heavy": [], "torch": True}
    metrics = [json.loads(ln) for ln in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1] and metrics[0]["AP"] >= 0


def test_the_sweep_and_train_read_data_through_one_function():
    from tune.launch import data_source, sweep

    assert sweep.prepare_manifest is data_source.prepare_manifest


@pytest.mark.parametrize(("flag", "env", "message"), [
    (["--gpu-memory-fraction", "1.5"], None, "gpu_memory_fraction: should be in (0, 1], got 1.5"),
    ([], "half", "BOXTUNE_GPU_MEMORY_FRACTION: expected a number, got 'half'"),
])
def test_bad_gpu_memory_fraction_is_one_line(tmp_path, tiny_demo, capsys, monkeypatch, flag, env, message):
    from tune.cli import main

    if env is not None:
        monkeypatch.setenv("BOXTUNE_GPU_MEMORY_FRACTION", env)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": str(tiny_demo)}, "model": TINY_MODEL}))
    assert main(["train", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", *flag]) == 2
    assert capsys.readouterr().err.strip() == f"boxtune: error: {message}"
    assert not (tmp_path / "out").exists()  # refused before any work
