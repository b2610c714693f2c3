"""How wide a trial's 95% AP interval is against the number of val images, from a real run.

    python benchmarks/bench_interval_width.py RUN [--trial ID] [--sizes 12 24 48 96] [--subsets 20]
    python benchmarks/bench_interval_width.py TRAIN_DIR --data DATASET [--val-fraction 0.2 --seed 0]

Takes a sweep's best trial's (or ``--trial``'s) best epoch, or a ``boxtune train`` folder's (or a
``run_trial`` folder's, as ``bench_transfer.py`` parts 1 and 2 write them) best epoch, whose
manifest is rebuilt from ``--data`` with the split it was trained on. It reads the epoch's stored
val detections (``detections/epoch_NNNN.parquet``) and, for each size n, draws ``--subsets`` random
subsets of n val images (without replacement, seeded), computes the paired-bootstrap 95% interval
of AP on each (``tune.run.intervals``: 1,000 resamples), and prints the median width and the
median AP. The full val set is the last row. The interval's width shrinks about as 1/sqrt(n).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.coco_eval import build_coco_gt, detections_to_coco_results  # noqa: E402
from trainables.intervals import ImageMatches, percentile_interval, resample_counts  # noqa: E402
from tune.run import load_sweep, pick_trial, rank_trials  # noqa: E402
from tune.run.folder import TrainFolder  # noqa: E402
from tune.run.intervals import RESAMPLES, SEED  # noqa: E402


def _width(records, detections, manifest, resamples: int) -> tuple[float, float]:
    gt = build_coco_gt(records, [(c.dataset_id, c.name) for c in manifest.classes])
    ids = set(gt.getImgIds())
    results = detections_to_coco_results({k: v for k, v in detections.items() if k in ids},
                                         label_to_dataset_id=manifest.label_to_dataset_id)
    matches = ImageMatches.evaluate(gt, results)
    ap = float(matches.metrics(None, names=["AP"])["AP"][0])
    low, high = percentile_interval(matches.metrics(resample_counts(len(ids), resamples, SEED), names=["AP"])["AP"])
    return ap, high - low


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--trial", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 24, 48, 96])
    p.add_argument("--subsets", type=int, default=20)
    p.add_argument("--resamples", type=int, default=RESAMPLES)
    p.add_argument("--data", default=None, help="a train folder's dataset (its manifest is rebuilt from it)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="the split seed it was trained with")
    args = p.parse_args()
    if args.data is None:
        view = load_sweep(args.run)
        trial = pick_trial(view, args.trial)
        epoch = next(r["best_epoch"] for r in rank_trials(view, intervals=False) if r["trial"] == trial.trial_id)
        detections, manifest, name = view.folder.read_detections(trial.dir_name, epoch), view.manifest(), trial.trial_id
    else:
        from trainables.data import build_manifest

        folder = TrainFolder(args.run)
        epoch = int(folder.best()["epoch"])
        detections, name = folder.read_detections(epoch), "train run"
        manifest = build_manifest(args.data, val_fraction=args.val_fraction, seed=args.seed)
    if detections is None:
        raise SystemExit(f"{args.run}: {name} has no stored detections for epoch {epoch}")
    val = manifest.records("val")
    rng = np.random.default_rng(0)
    print(f"# {datetime.date.today()}, {platform.platform()}, {os.cpu_count()} CPUs; {args.run}, {name} "
          f"epoch {epoch}, {len(val)} val images, {args.resamples} resamples")
    print(f"{'val images':>10}  {'subsets':>7}  {'median AP':>9}  {'median 95% width':>16}")
    for n in [s for s in args.sizes if s < len(val)] + [len(val)]:
        draws = 1 if n == len(val) else args.subsets
        rows = [_width([val[i] for i in sorted(rng.choice(len(val), n, replace=False))] if n < len(val) else val,
                       detections, manifest, args.resamples) for _ in range(draws)]
        print(f"{n:>10}  {draws:>7}  {np.median([r[0] for r in rows]):>9.4f}  {np.median([r[1] for r in rows]):>16.4f}")


if __name__ == "__main__":
    main()
