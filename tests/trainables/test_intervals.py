"""Bootstrap re-accumulation equals pycocotools run on the resampled val set, ties and all."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from trainables import intervals
from trainables.coco_eval import _evaluate_results, build_coco_gt, per_class_stats
from trainables.intervals import ImageMatches, percentile_interval, resample_counts
from trainables.objective import CLASS_METRICS, METRICS

CATEGORIES = [(3, "cat"), (17, "dog"), (42, "bird"), (90, "ghost")]  # ghost: detections, never an object


def _record(image_id, boxes, cids, crowd=None, difficult=None):
    xywh = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(xywh)
    return {"image_id": image_id, "width": 320, "height": 320, "eval_xywh": xywh,
            "eval_category_ids": np.asarray(cids, dtype=np.int64).reshape(-1),
            "eval_iscrowd": np.zeros(n, bool) if crowd is None else np.asarray(crowd, bool),
            "eval_area": xywh[:, 2] * xywh[:, 3],
            "eval_difficult": np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool)}


def _det(image_id, cid, box, score):
    return {"image_id": image_id, "category_id": cid, "bbox": [float(v) for v in box], "score": float(score)}


def _random_case(seed, *, n_images=20, decimals=None, crowd=0.08, difficult=0.08, bird=0.3):
    """Detector-like: jittered hits, duplicate hits (false positives), misses, stray boxes of every
    class (ghost included), objects of every COCO size; some images without detections, ids with gaps.
    ``decimals`` rounds scores, which makes exact ties across and within images, hits and misses mixed."""
    rng = np.random.default_rng(seed)
    records, results = [], []
    for image_id in range(5, 5 + 3 * n_images, 3):
        n = int(rng.integers(0, 6))
        xy, wh = rng.uniform(0, 160, (n, 2)), rng.uniform(4, 150, (n, 2))
        boxes = np.concatenate([xy, wh], axis=1)
        cids = np.where(rng.random(n) < bird, 42, rng.choice([3, 17], n))
        records.append(_record(image_id, boxes, cids, rng.random(n) < crowd, rng.random(n) < difficult))
        if image_id % 4 == 0:
            continue  # no detections on this image
        dets = []
        for box, cid in zip(boxes, cids, strict=True):
            for _ in range(int(rng.random() < 0.8) + int(rng.random() < 0.3)):  # missed, found, found twice
                dets.append((int(cid), box + rng.normal(0, 0.08 * box[2:].mean(), 4) * [1, 1, 0.5, 0.5]))
        for _ in range(int(rng.integers(0, 4))):
            dets.append((int(rng.choice([3, 17, 42, 90])), np.r_[rng.uniform(0, 200, 2), rng.uniform(5, 90, 2)]))
        scores = rng.uniform(0.05, 1.0, len(dets))
        if decimals is not None:
            scores = np.round(scores, decimals)
        results += [_det(image_id, cid, box, s) for (cid, box), s in zip(dets, scores, strict=True)]
    return records, results


def _tie_case():
    """Exact ties by hand: every score 0.5. Image 1 holds a hit, a duplicate on it (false positive)
    and a stray, in that order; image 4 a stray before a hit; image 7 only a stray; image 9 an object
    and nothing found; image 12 a crowd region hit three times (all ignored) and a difficult object
    hit twice (ignored, then a false positive); two dog boxes where no dog is (NaN for dog)."""
    box = [[10, 10, 50, 40], [100, 100, 30, 30], [200, 50, 60, 90], [20, 200, 80, 80], [150, 150, 40, 40]]
    records = [_record(1, box[:1], [3]), _record(4, box[1:2], [3]), _record(7, [], []),
               _record(9, box[2:3], [3]), _record(12, box[3:], [3, 3], crowd=[1, 0], difficult=[0, 1])]
    near = [[11, 10, 50, 40], [10, 11, 49, 40], [100, 101, 30, 30], [21, 200, 80, 80], [150, 151, 40, 40]]
    results = [_det(1, 3, near[0], 0.5), _det(1, 3, near[1], 0.5), _det(1, 3, [250, 250, 20, 20], 0.5),
               _det(4, 3, [0, 0, 10, 10], 0.5), _det(4, 3, near[2], 0.5), _det(7, 3, [30, 30, 30, 30], 0.5),
               _det(12, 3, near[3], 0.5), _det(12, 3, box[3], 0.5), _det(12, 3, near[3], 0.5),
               _det(12, 3, near[4], 0.5), _det(12, 3, box[4], 0.5),
               _det(12, 17, near[4], 0.5), _det(1, 17, near[0], 0.7)]
    return records, results


def _crowded_case(seed=5):
    """130 detections of one class on one image (pycocotools keeps each image's best 100 before
    ranking across images), scores on a 0.01 grid so the cut falls inside a tie."""
    rng = np.random.default_rng(seed)
    records, results = _random_case(seed, n_images=6, decimals=2)
    image_id = records[2]["image_id"]
    boxes = np.concatenate([rng.uniform(0, 250, (12, 2)), rng.uniform(10, 60, (12, 2))], axis=1)
    records[2] = _record(image_id, boxes, [3] * 12)
    for _ in range(130):
        box = boxes[rng.integers(0, 12)] + rng.normal(0, 3, 4)
        results.append(_det(image_id, 3, box, round(float(rng.uniform(0.1, 0.9)), 2)))
    return records, results


CASES = {
    "random0": lambda: _random_case(0),
    "random1": lambda: _random_case(1, n_images=30),
    "ties_1_decimal": lambda: _random_case(2, decimals=1),
    "ties_2_decimals": lambda: _random_case(3, n_images=30, decimals=2, crowd=0.2, difficult=0.2),
    "rare_bird": lambda: _random_case(4, bird=0.04),
    "hand_ties": _tie_case,
    "over_100": _crowded_case,
    "empty_results": lambda: (_random_case(6)[0], []),
}


def _pycocotools(records, results):
    """COCO_STAT_NAMES and per-class stats from pycocotools itself, -1 as NaN."""
    coco_eval = _evaluate_results(build_coco_gt(records, CATEGORIES), [dict(r) for r in results])
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
    stats = {n: (math.nan if v == -1 else float(v)) for n, v in zip(names, coco_eval.stats, strict=False)}
    return stats, per_class_stats(coco_eval)


def _renumbered(records, results, counts):
    """Image i repeated counts[i] times; copies adjacent, images in id order, new ids 1, 2, ..."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    new_records, new_results, next_id = [], [], 1
    for record, c in zip(sorted(records, key=lambda r: r["image_id"]), counts, strict=True):
        for _ in range(int(c)):
            new_records.append({**record, "image_id": next_id})
            new_results += [{**r, "image_id": next_id} for r in by_image.get(record["image_id"], [])]
            next_id += 1
    return new_records, new_results


def _assert_same(ours, row, stats, per_class):
    expected = {**{m: stats[m] for m in METRICS},
                **{(s, c): v[s] for c, v in per_class.items() for s in CLASS_METRICS}}
    assert set(ours) == set(expected)
    for key, want in expected.items():
        got = ours[key][row]
        if math.isnan(want):
            assert math.isnan(got), key
        else:
            assert abs(got - want) <= 1e-12, (key, got, want)


def _rows(n_images: int) -> np.ndarray:
    """Six bootstrap rows, one image drawn n times, and one with most images left out."""
    rows = resample_counts(n_images, 6, seed=11)
    one = np.zeros(n_images, np.int64)
    one[n_images // 2] = n_images
    few = np.zeros(n_images, np.int64)
    few[::4] = 3
    return np.vstack([rows, one, few])


@pytest.mark.parametrize("case", CASES)
def test_full_set_equals_pycocotools(case):
    records, results = CASES[case]()
    matches = ImageMatches.evaluate(build_coco_gt(records, CATEGORIES), results)
    assert matches.image_ids == sorted(r["image_id"] for r in records)
    assert matches.category_ids == [3, 17, 42, 90]
    _assert_same(matches.metrics(), 0, *_pycocotools(records, results))


@pytest.mark.parametrize("case", CASES)
def test_resamples_equal_pycocotools_on_renumbered_copies(case):
    records, results = CASES[case]()
    matches = ImageMatches.evaluate(build_coco_gt(records, CATEGORIES), results)
    counts = _rows(len(records))
    ours = matches.metrics(counts)
    for row, c in enumerate(counts):
        _assert_same(ours, row, *_pycocotools(*_renumbered(records, results, c)))


def test_ties_make_the_order_of_copies_matter():
    # a hit and its duplicate at one score: pycocotools ranks two copies hit, miss, hit, miss
    records = [_record(1, [[10, 10, 50, 40]], [3])]
    results = [_det(1, 3, [11, 10, 50, 40], 0.5), _det(1, 3, [10, 11, 49, 40], 0.5)]
    matches = ImageMatches.evaluate(build_coco_gt(records, CATEGORIES), results)
    ap50 = matches.metrics(np.array([[2]]), names=[("AP50", 3)])[("AP50", 3)][0]
    stats, per_class = _pycocotools(*_renumbered(records, results, [2]))
    # recall 0.5 at precision 1, recall 1 at precision 2/3; copies adjacent (hit, hit) would give 1.0
    assert ap50 == pytest.approx((51 * 1 + 50 * 2 / 3) / 101, abs=1e-12)
    assert abs(ap50 - per_class[3]["AP50"]) <= 1e-12


@pytest.mark.parametrize("chunk", [1, 37])
def test_chunks_do_not_change_numbers(monkeypatch, chunk):
    records, results = _random_case(3, decimals=1)
    matches = ImageMatches.evaluate(build_coco_gt(records, CATEGORIES), results)
    counts = resample_counts(len(records), 9, seed=1)
    whole = matches.metrics(counts)
    monkeypatch.setattr(intervals, "_CHUNK_ELEMENTS", chunk)
    for key, values in matches.metrics(counts).items():
        np.testing.assert_array_equal(values, whole[key])


def test_names_select_numbers():
    records, results = _random_case(0)
    matches = ImageMatches.evaluate(build_coco_gt(records, CATEGORIES), results)
    counts = resample_counts(len(records), 4, seed=2)
    some = matches.metrics(counts, names=["AR100", ("AP", 17)])
    full = matches.metrics(counts)
    assert set(some) == {"AR100", ("AP", 17)}
    np.testing.assert_array_equal(some[("AP", 17)], full[("AP", 17)])
    with pytest.raises(ValueError, match="unknown metric 'AR10'"):
        matches.metrics(names=["AR10"])
    with pytest.raises(ValueError, match="category 5 is not in the ground truth"):
        matches.metrics(names=[("AP", 5)])
    with pytest.raises(ValueError, match=r"shape \(resamples, 20\)"):
        matches.metrics(np.ones((3, 19), np.int64))
    gt = build_coco_gt(records, CATEGORIES)
    with pytest.raises(ValueError, match=r"evaluate\(\) has run"):
        ImageMatches.from_cocoeval(COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox"))


@pytest.mark.parametrize(("n_images", "resamples"), [(1, 1), (48, 200), (300, 7)])
def test_resample_counts(n_images, resamples):
    counts = resample_counts(n_images, resamples, seed=0)
    assert counts.shape == (resamples, n_images) and np.issubdtype(counts.dtype, np.integer)
    assert (counts.sum(axis=1) == n_images).all() and counts.min() >= 0
    np.testing.assert_array_equal(counts, resample_counts(n_images, resamples, seed=0))
    if n_images > 1:
        assert not np.array_equal(counts, resample_counts(n_images, resamples, seed=1))


def test_resample_counts_rejects_nothing_to_draw():
    with pytest.raises(ValueError, match="n_images should be >= 1, got 0"):
        resample_counts(0, 10, seed=0)


def test_four_times_the_images_halves_the_interval():
    records, results = _random_case(7, n_images=50)
    base = ImageMatches.evaluate(build_coco_gt(records, CATEGORIES), results)
    big_records, big_results = _renumbered(records, results, [4] * len(records))
    big = ImageMatches.evaluate(build_coco_gt(big_records, CATEGORIES), big_results)
    widths = []
    for matches in (base, big):
        ap = matches.metrics(resample_counts(len(matches.image_ids), 1500, seed=3), names=["AP"])["AP"]
        lo, hi = percentile_interval(ap)
        widths.append(hi - lo)
    assert 0.35 < widths[1] / widths[0] < 0.65


def test_paired_difference_is_narrower():
    records, results = _random_case(8, n_images=30)
    gt = build_coco_gt(records, CATEGORIES)
    rng = np.random.default_rng(0)
    other = [{**r, "score": float(r["score"] * rng.uniform(0.8, 1.0))} for r in results]
    counts = resample_counts(len(records), 400, seed=4)
    a, b = (ImageMatches.evaluate(gt, r).metrics(counts, names=["AP"])["AP"] for r in (results, other))
    lo, hi = percentile_interval(a - b)
    # the same images in both trials: the difference varies less than either trial on its own
    assert hi - lo < min(np.subtract(*percentile_interval(v)[::-1]) for v in (a, b))
    assert percentile_interval(np.array([np.nan, np.nan])) == pytest.approx((math.nan, math.nan), nan_ok=True)
    with pytest.raises(ValueError, match=r"level should be in the range \(0,1\), got 95"):
        percentile_interval(a, level=95)
