"""Commands check before they load: a missing path or a bad argument is one line, before torch is imported.

Each case runs the CLI in a fresh interpreter and reports, at exit, whether torch got imported
(importing torch and torchvision takes seconds; the answer should not wait for it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

_PROBE = ("import json, sys\n"
          "from tune.cli import main\n"
          "rc = main(sys.argv[1:])\n"
          "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")


def _run(argv: list[str], cwd) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120,
                         cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip(), out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr.strip()


@pytest.mark.parametrize("argv,message", [
    (["data", "summary", "{tmp}/nonexistent"], "{tmp}/nonexistent: dataset not found"),
    (["data", "summary", "{tmp}/gone.parquet"], "{tmp}/gone.parquet: manifest not found"),
    (["data", "summary", "{tmp}", "--val-path", "{tmp}/val.json"], "--val-path {tmp}/val.json: dataset not found"),
    (["export", "{tmp}/runs/none", "--out", "{tmp}/best.pt"], "{tmp}/runs/none: no such folder"),
    (["export", "{tmp}", "--out", "{tmp}/best.pt"],
     "{tmp}: not a boxtune sweep or train folder (no sweep.yaml or metrics.jsonl)"),
    (["export", "{tmp}/runs/none", "--out", "{tmp}"], "--out {tmp} is a folder; give a file name such as {tmp}/best.pt"),
    (["export", "{tmp}/runs/none", "--out", "{tmp}/b.pt", "--score-threshold", "0.1"],
     "--score-threshold is baked into torchscript and onnx exports; a .pt export takes it when it runs "
     "(boxtune predict --score-threshold)"),
    (["predict", "{tmp}/best.pt", "{tmp}", "--out", "{tmp}/p.json"], "{tmp}/best.pt: no such file"),
    (["predict", "{tmp}", "{tmp}", "--out", "{tmp}/p.json"],
     "{tmp}: a folder; predict reads an export file. For a sweep or train folder: boxtune export {tmp} --out "
     "best.pt, then boxtune predict best.pt ..."),
    (["predict", "{tmp}/best.pt", "{tmp}", "--out", "{tmp}/p.json", "--score-threshold", "2"],
     "--score-threshold should be in [0, 1], got 2.0"),
    (["report", "{tmp}/runs/none"], "{tmp}/runs/none: no such folder"),
    (["status", "{tmp}"], "{tmp}: not a boxtune sweep folder (no sweep.yaml)"),
    (["tensorboard", "{tmp}/runs/none"], "{tmp}/runs/none: no such folder"),
    (["train", "{tmp}/none.yaml", "--out", "{tmp}/out"], "{tmp}/none.yaml: cannot read config (No such file or directory)"),
])
def test_errors_come_before_torch_loads(tmp_path, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    result, err = _run(argv, tmp_path)
    assert result == {"rc": 2, "torch": False}, err
    assert err == f"boxtune: error: {message.format(tmp=tmp_path)}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.json").exists()
