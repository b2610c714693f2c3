"""Sweep benchmarks: Ray's overhead per trial, and ASHA against FIFO on the demo task.

    python benchmarks/bench_sweep.py overhead [--trials 8]
        A sweep's wall time (Tuner.fit, Ray already started) against the sum of its trials' own
        time (Ray's time_total_s for each trial), one trial at a time, for small trials.
        Overhead per trial = (wall - sum of trial times) / trials. Target: under 2 s.

    python benchmarks/bench_sweep.py asha [--trials 8 --epochs 4]
        The same sampler (TPE, same seed) and trial count under FIFO and under ASHA, one after the
        other in one run. Reports the epochs each spent before first reaching the best AP that
        FIFO found (trials ordered by when their epochs finished). Target: ASHA under half.

Both run on a local Ray bound to loopback, with generated demo data and a randomly initialised
MobileNetV3 Faster R-CNN, because nothing can be downloaded here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _config(tmp: Path, data: Path, *, name: str, trials: int, epochs: int, scheduler: dict, concurrent: int,
            size: int, space="quick"):
    from tune.config import SweepConfig

    return SweepConfig.model_validate({
        "name": name,
        "data": {"path": str(data), "val_fraction": 0.25, "seed": 0},
        "model": {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None, "min_size": size,
                  "max_size": size, "box_batch_size_per_image": 128},
        "training": {"epochs": epochs, "seed": 0},
        "search": {"space": space, "num_trials": trials, "sampler": "tpe", "seed": 0},
        "scheduler": scheduler,
        "resources": {"cpu": 1},
        "max_concurrent": concurrent,
        "storage": str(tmp / "runs"),
        "retries": 0,
    })


def _results(run: Path) -> list[dict]:
    rows = []
    for result in run.glob("*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def overhead(args, tmp: Path, data: Path) -> dict:
    import ray

    from tune.workflow import run_sweep

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t0
    try:
        cfg = _config(tmp, data, name="overhead", trials=args.trials, epochs=1, scheduler={"name": "fifo"},
                      concurrent=1, size=96)
        t0 = time.perf_counter()
        run_sweep(cfg, echo=lambda *_: None)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    rows = _results(tmp / "runs" / "overhead")
    trial_time = {}
    for r in rows:
        trial_time[r["trial_id"]] = max(trial_time.get(r["trial_id"], 0.0), r["time_total_s"])
    compute = sum(trial_time.values())
    inner = sum(r["train_s"] + r["eval_s"] for r in rows)
    return {"trials": len(trial_time), "ray_startup_s": round(startup, 2), "sweep_wall_s": round(wall, 2),
            "sum_trial_time_s": round(compute, 2), "sum_train_plus_eval_s": round(inner, 2),
            "overhead_per_trial_s": round((wall - compute) / len(trial_time), 2),
            "overhead_incl_model_build_per_trial_s": round((wall - inner) / len(trial_time), 2)}


def _epochs_to_reach(rows: list[dict], target: float) -> int | None:
    spent = 0
    for r in sorted(rows, key=lambda r: r["timestamp"]):  # when each epoch's result arrived
        spent += 1
        if r["AP"] >= target:
            return spent
    return None


def asha(args, tmp: Path, data: Path) -> dict:
    import ray

    from tune.workflow import run_sweep

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    try:
        for name, scheduler in (("fifo", {"name": "fifo"}),
                                ("asha", {"name": "asha", "grace_period": 1, "reduction_factor": 2})):
            cfg = _config(tmp, data, name=name, trials=args.trials, epochs=args.epochs, scheduler=scheduler,
                          concurrent=2, size=args.size)
            t0 = time.perf_counter()
            run_sweep(cfg, echo=lambda *_: None)
            out[name] = {"rows": _results(tmp / "runs" / name), "wall_s": time.perf_counter() - t0}
    finally:
        ray.shutdown()
    best_fifo = max(r["AP"] for r in out["fifo"]["rows"])
    summary = {"fifo_best_AP": round(best_fifo, 4),
               "asha_best_AP": round(max(r["AP"] for r in out["asha"]["rows"]), 4)}
    for name in ("fifo", "asha"):
        rows = out[name]["rows"]
        summary[f"{name}_epochs_total"] = len(rows)
        summary[f"{name}_epochs_to_fifo_best"] = _epochs_to_reach(rows, best_fifo)
        summary[f"{name}_wall_s"] = round(out[name]["wall_s"], 1)
    if summary["asha_epochs_to_fifo_best"]:
        summary["ratio_asha_over_fifo"] = round(summary["asha_epochs_to_fifo_best"] / summary["fifo_epochs_to_fifo_best"], 3)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("overhead", "asha"))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--images", type=int, default=120)
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from trainables.data import make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = 96 if args.mode == "overhead" else args.size
        images = 24 if args.mode == "overhead" else args.images
        data = make_demo_dataset(tmp / "data", num_images=images, image_size=size, seed=0)
        result = overhead(args, tmp, data) if args.mode == "overhead" else asha(args, tmp, data)
    print(json.dumps({"mode": args.mode, "setup": vars(args), "cpus": os.cpu_count(), **result}, indent=2))


if __name__ == "__main__":
    main()
