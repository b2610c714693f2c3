"""Bootstrap intervals on generated detections: re-accumulating resamples against pycocotools itself.

    python benchmarks/bench_intervals.py [--images 1000 --dets 20 --classes 4 --resamples 1000 --trials 50]
    python benchmarks/bench_intervals.py --smoke        # seconds: 100 images, 50 resamples, 3 trials

Rows (seconds, one process, numpy's default threads):

* ``COCOeval evaluate + accumulate``: pycocotools on the full set once, for scale.
* ``ImageMatches.evaluate``: matching once per image (COCOeval.evaluate), one trial.
* ``metrics, AP + AR100``: the re-accumulation of ``--resamples`` resamples, the cells an AP
  objective needs (area "all", every class); ``metrics, everything``: every area and class stat.
* ``N trials: evaluate`` / ``N trials: metrics AP + AR100``: the same for ``--trials`` trials on one
  ground truth and one set of resamples, as a sweep report does.
* ``accumulate per resample (estimate)``: pycocotools' accumulate time times the resamples, what
  the direct route would cost (it would also need evaluate on every duplicated set).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.coco_eval import _DifficultIgnoringEval, _quiet, build_coco_gt  # noqa: E402
from trainables.intervals import ImageMatches, resample_counts  # noqa: E402


def _ground_truth(images: int, classes: int, seed: int):
    """``images`` 640x480 images with 1 to 6 objects each, sizes across COCO's ranges, a few crowd."""
    rng = np.random.default_rng(seed)
    records = []
    for image_id in range(1, images + 1):
        n = int(rng.integers(1, 7))
        wh = np.exp(rng.uniform(np.log(12), np.log(300), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([640, 480]) - wh).clip(1)
        xywh = np.concatenate([xy, wh], axis=1)
        records.append({"image_id": image_id, "width": 640, "height": 480, "eval_xywh": xywh,
                        "eval_category_ids": rng.integers(1, classes + 1, n), "eval_iscrowd": rng.random(n) < 0.02,
                        "eval_area": wh[:, 0] * wh[:, 1], "eval_difficult": np.zeros(n, bool)})
    return records


def _trial_results(records, dets: int, classes: int, seed: int) -> list[dict]:
    """A detector's ``dets`` boxes per image: jittered hits (higher scores) then strays, float32 scores."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.5, 1.5)  # trials differ in how well they localise
    results = []
    for record in records:
        boxes, cids = record["eval_xywh"], record["eval_category_ids"]
        hit = rng.random(len(boxes)) < 0.85
        found = boxes[hit] + rng.normal(0, 0.07 * quality, (int(hit.sum()), 4)) * boxes[hit][:, [2, 3, 2, 3]]
        m = max(dets - len(found), 0)
        stray = np.concatenate([rng.uniform(0, 500, (m, 2)), np.exp(rng.uniform(np.log(8), np.log(200), (m, 2)))], 1)
        scores = np.concatenate([rng.beta(5, 2, len(found)), rng.beta(1, 4, m)]).astype(np.float32)
        labels = np.concatenate([cids[hit], rng.integers(1, classes + 1, m)])
        for box, label, score in zip(np.concatenate([found, stray]), labels, scores, strict=True):
            results.append({"image_id": record["image_id"], "category_id": int(label),
                            "bbox": [float(v) for v in box], "score": float(score)})
    return results


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--dets", type=int, default=20, help="detections per image")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="100 images, 50 resamples, 3 trials: runs in seconds")
    args = p.parse_args()
    if args.smoke:
        args.images, args.resamples, args.trials = 100, 50, 3

    categories = [(c, f"class{c}") for c in range(1, args.classes + 1)]
    records = _ground_truth(args.images, args.classes, seed=0)
    gt = build_coco_gt(records, categories)
    results = _trial_results(records, args.dets, args.classes, seed=1)
    counts = resample_counts(args.images, args.resamples, seed=0)
    rows = []

    with _quiet():
        coco_eval = _DifficultIgnoringEval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox")
        _, t_eval = _timed(coco_eval.evaluate)
        _, t_acc = _timed(coco_eval.accumulate)
    rows.append(("COCOeval evaluate + accumulate, full set", t_eval + t_acc))
    matches, t_match = _timed(lambda: ImageMatches.evaluate(gt, results))
    rows.append(("ImageMatches.evaluate, one trial", t_match))
    _, t_ap = _timed(lambda: matches.metrics(counts, names=("AP", "AR100")))
    rows.append((f"metrics, AP + AR100, {args.resamples} resamples", t_ap))
    _, t_all = _timed(lambda: matches.metrics(counts))
    rows.append((f"metrics, everything, {args.resamples} resamples", t_all))

    t_trials_match = t_trials_metrics = 0.0
    for trial in range(args.trials):
        trial_matches, t = _timed(lambda trial=trial: ImageMatches.evaluate(
            gt, _trial_results(records, args.dets, args.classes, seed=100 + trial)))
        t_trials_match += t
        _, t = _timed(lambda m=trial_matches: m.metrics(counts, names=("AP", "AR100")))
        t_trials_metrics += t
    rows.append((f"{args.trials} trials: ImageMatches.evaluate", t_trials_match))
    rows.append((f"{args.trials} trials: metrics AP + AR100, {args.resamples} resamples", t_trials_metrics))
    rows.append((f"accumulate per resample (estimate: {args.resamples} x accumulate)", t_acc * args.resamples))

    print(f"# bench_intervals  {datetime.date.today().isoformat()}  {platform.platform()}  "
          f"{platform.processor() or platform.machine()}  {os.cpu_count()} CPUs  python {platform.python_version()}  "
          f"numpy {np.__version__}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.images} images, {len(results)} detections ({args.dets}/image), {args.classes} classes, "
          f"{len(gt.getAnnIds())} objects")
    width = max(len(name) for name, _ in rows)
    print(f"| {'step':<{width}} | seconds |")
    print(f"|{'-' * (width + 2)}|---------|")
    for name, seconds in rows:
        print(f"| {name:<{width}} | {seconds:7.2f} |")


if __name__ == "__main__":
    main()
