"""Sweep throughput on one Ray node against two nodes of the same size, in one run.

    python benchmarks/bench_scaling.py [--trials 8 --epochs 2 --size 96 --images 24]

The same sweep twice: equal-cost trials (fixed hyperparameters, so every trial does the same
work: same model, data, batch size, epochs, 1 CPU and 1 torch thread each), first on a
one-node cluster, then on a two-node cluster, each node with 1 CPU. Trials per hour is
``trials / sweep wall time`` (from ``run_sweep`` to its ranking, which includes Optuna, Tune's
scheduling, checkpoints written to the shared storage, and the first trials' start-up). Target:
two nodes >= 1.8x one node.

Both clusters are real multi-node Ray clusters (``ray.cluster_utils.Cluster``), started inside a
private network namespace (``unshare -rn``) so every port is on loopback; see
``tests/cluster_scenarios.py``. On a 2-core machine, two 1-CPU nodes against one 1-CPU node is
the only fair comparison: the nodes share the machine, and each trial gets one core.
Results (trials, seconds, trials per hour, the ratio) are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# every trial the same: constants only, nothing sampled
FIXED_HPARAMS = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 4, "freeze_depth": 0}


def _trial_seconds(run: Path) -> list[float]:
    """Each trial's own time (Ray's time_total_s at its last report)."""
    out = []
    for result in run.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out.append(rows[-1]["time_total_s"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--size", type=int, default=96, help="image side, px (the model trains at this size)")
    p.add_argument("--images", type=int, default=24)
    args = p.parse_args()

    from cluster_scenarios import run_scenario

    from trainables.data import make_demo_dataset

    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        data = make_demo_dataset(work / "data", num_images=args.images, image_size=args.size, seed=0)
        (work / "sweep.yaml").write_text(yaml.safe_dump({
            "name": "scaling",
            "data": {"path": str(data), "val_fraction": 0.25, "seed": 0},
            "model": {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None,
                      "min_size": args.size, "max_size": args.size, "box_batch_size_per_image": 64},
            "training": {"epochs": args.epochs, "seed": 0},
            "search": {"space": FIXED_HPARAMS, "num_trials": args.trials, "sampler": "random", "seed": 0},
            "scheduler": {"name": "fifo"},
            "resources": {"cpu": 1},
            "max_concurrent": args.trials,  # the cluster's CPUs are the only limit
            "storage": str(work / "runs"),
            "retries": 0,
        }))
        load_before = os.getloadavg()[0]
        seen = run_scenario("scaling", work, timeout_s=3600)
        load_after = os.getloadavg()[0]
        trial_s = {n: _trial_seconds(work / "runs" / f"scaling_{n}node") for n in ("1", "2")}

    result = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, no GPU (CPU trials)",
        # other work on the machine takes cores from the two-node run first: quote the ratio with it
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "setup": {**vars(args), "cpus_per_node": 1, "cpus_per_trial": 1, "hparams": FIXED_HPARAMS},
        "note": "two 1-CPU nodes against one 1-CPU node: on a 2-core machine the only fair comparison",
    }
    for n in ("1", "2"):
        s = seen[n]
        assert s["finished"] == args.trials, f"{n} node(s): {s['finished']} of {args.trials} trials finished"
        result[f"{n}_node"] = {"sweep_s": round(s["seconds"], 1), "trials_per_hour": round(s["trials"] * 3600 / s["seconds"], 1),
                               "median_trial_s": round(statistics.median(trial_s[n]), 1)}
    result["speedup"] = round(result["2_node"]["trials_per_hour"] / result["1_node"]["trials_per_hour"], 2)
    result["target_met"] = result["speedup"] >= 1.8
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
