"""ASHA against batch halving (``scheduler.name: halving``) on the demo sweep: trials per hour,
epochs spent, and whether the stops repeat.

    python benchmarks/bench_schedulers.py                 # the demo: 4 trials x 4 epochs, 2 at a time, grace 2
    python benchmarks/bench_schedulers.py --trials 8      # two batches of 4

Both run in one process on one local Ray (loopback), one after the other, with the demo's seeds;
``--rounds 2`` alternates them twice (asha, halving, asha, halving) so that load that comes and
goes hits both. Writes ``--out``/schedulers.json. The larger comparison, from a pretrained start,
is ``bench_transfer.py --part 3 --schedulers fifo asha halving``. Figures: docs/benchmarks.md.
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
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only


def _stops(run: Path) -> dict[int, int]:
    """Creation number -> epochs the trial ran."""
    from tune.run import load_sweep

    return {t.number: len(t.history) for t in load_sweep(str(run)).trials}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=240, help="demo images (a fifth of them val)")
    p.add_argument("--size", type=int, default=160, help="image side, px")
    p.add_argument("--rounds", type=int, default=1, help="times each scheduler runs, alternating")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "boxtune-bench-schedulers"))
    args = p.parse_args(argv)

    import ray

    from trainables.data import make_demo_dataset
    from tune.config import SweepConfig
    from tune.demo import demo_config
    from tune.launch.sweep import launch_sweep

    runs: dict[str, list[dict]] = {"asha": [], "halving": []}
    with tempfile.TemporaryDirectory(prefix="boxtune-schedulers-") as tmp:
        out = Path(tmp)
        make_demo_dataset(out / "data", num_images=args.images, image_size=args.size, seed=0)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for round_ in range(args.rounds):
                for name in runs:
                    cfg = demo_config(out, num_trials=args.trials, epochs=args.epochs, name=f"{name}-{round_}",
                                      image_size=args.size).model_dump()
                    cfg["scheduler"]["name"] = name
                    started = time.perf_counter()
                    launch_sweep(SweepConfig.model_validate(cfg), echo=lambda *_: None)
                    wall = time.perf_counter() - started
                    stops = _stops(out / "runs" / f"{name}-{round_}")
                    runs[name].append({"wall_s": round(wall, 1), "epochs": sum(stops.values()),
                                       "trials_per_hour": round(len(stops) / wall * 3600, 1),
                                       "epochs_per_hour": round(sum(stops.values()) / wall * 3600, 1),
                                       "epochs_by_trial": stops, "load_average_1min": round(os.getloadavg()[0], 1)})
                    print(name, json.dumps(runs[name][-1]), flush=True)
        finally:
            ray.shutdown()
    mean = {name: sum(r["trials_per_hour"] for r in rs) / len(rs) for name, rs in runs.items()}
    report = {"setup": vars(args), "cpus": os.cpu_count(), "runs": runs,
              "halving_over_asha_trials_per_hour": round(mean["halving"] / mean["asha"], 3)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "schedulers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
