"""benchmarks/gpu.sh's CPU fallback: the one-command GPU benchmark runs every part and writes its JSON.

The GPU machine is lent for minutes; a typo found there costs the run. ``--device cpu --tiny``
runs each part's code path (real trials, real ``boxtune train`` processes, the real loader) at
toy sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

_ENV = {**os.environ, "PYTHON": sys.executable, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _gpu_sh(*args, cwd, timeout=600):
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--device", "cpu", "--tiny",
                           "--time-scale", "4", *args], capture_output=True, text=True, env=_ENV, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_out")
    run = _gpu_sh("--out", str(out), cwd=out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run, json.loads((out / "gpu_results.json").read_text())


def test_every_part_runs_and_reports(tiny_run):
    out, run, res = tiny_run
    env = res["environment"]
    assert env["device"] == "cpu" and isinstance(env["cudnn_allow_tf32"], bool)
    assert env["float32_matmul_precision"] in ("highest", "high", "medium")
    assert res["packages"]["missing"] == [] and res["packages"]["versions"]["pydantic"]
    assert set(res["parts"]) == {"train", "eval", "packing", "data", "memory"}
    assert {p["status"] for p in res["parts"].values()} == {"ok"}

    train = res["parts"]["train"]["rows"]
    assert [(r["loop"], r["dtype"]) for r in train] == [("boxtune", "fp32"), ("plain", "bf16")]
    assert train[-1]["knobs"] == ["channels_last", "cudnn_benchmark"]
    for r in train:
        assert r["error"] is None and r["images_per_s"] > 0 and r["peak_mib"] > 0

    (ev,) = res["parts"]["eval"]["rows"]
    assert ev["eval_images_per_s"] > 0 and 0 < ev["eval_share_of_epoch"] < 1 and ev["val_images"] > 0

    packing = res["parts"]["packing"]["rows"]
    assert [r["concurrent"] for r in packing] == [1, 2]
    for r in packing:
        assert r["error"] is None and r["trials_per_hour"] > 0 and len(r["trials"]) == r["concurrent"]
        assert all(t["rc"] == 0 and t["peak_rss_mib"] > 0 and t["in_loop_s"] > 0 for t in r["trials"])
    assert packing[0]["vs_one_at_a_time"] == 1.0

    data = res["parts"]["data"]["rows"]
    assert [(r["cached"], r["hit_rate"]) for r in data] == [(False, 0.0), (True, 1.0)]
    assert all(r["images_per_s"] > 0 for r in data) and data[1]["cache_mib"] > 0

    # the memory part's rows, and the preflight's table fitted from them beside the results
    memory = res["parts"]["memory"]["rows"]
    assert [(r["arch"], r["precision"], r["batch"]) for r in memory] == [
        ("fasterrcnn_mobilenet_v3_large_320_fpn", p, b) for p in ("amp", "fp32") for b in (1, 2)]
    assert all(r["error"] is None and r["megapixels"] == 64 * 96 / 1e6 and r["trainable_params"] > 0 for r in memory)
    table = json.loads((out / "gpu_memory.json").read_text())
    assert table == {k: v for k, v in res["memory_table"].items() if k != "demo_estimate_mib"}
    fit = table["architectures"]["fasterrcnn_mobilenet_v3_large_320_fpn"]["amp"]
    assert fit["measured"] == [[r["batch"], r["megapixels"], r["reserved_mib"]] for r in memory[:2]]
    assert res["memory_table"]["demo_estimate_mib"] > 0

    # one table on stdout, the same lines in the JSON
    assert "targets:" in res["summary"]
    assert "1. train" in run.stdout and "3. packing 2 at a time" in run.stdout and "4. data path" in run.stdout
    assert "5. memory" in run.stdout and "demo trial: estimate" in run.stdout


def test_rerunning_one_part_keeps_the_others(tiny_run):
    out, _, before = tiny_run
    run = _gpu_sh("--out", str(out), "--parts", "data", cwd=out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    after = json.loads((out / "gpu_results.json").read_text())
    assert after["parts"]["train"] == before["parts"]["train"]
    assert after["parts"]["packing"] == before["parts"]["packing"]
    assert [r["cached"] for r in after["parts"]["data"]["rows"]] == [False, True]


def test_unknown_part_is_named(tmp_path):
    run = _gpu_sh("--parts", "train,bogus", "--out", str(tmp_path), cwd=tmp_path, timeout=60)
    assert run.returncode == 2 and "--parts: unknown bogus" in run.stderr
