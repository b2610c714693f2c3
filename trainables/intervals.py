"""Paired bootstrap intervals on COCO numbers: how much of a difference between trials is noise.

A trial's val AP is one number from one set of images; on 48 images, AP differences of 0.01 are
well inside what another draw of 48 images would give. A bootstrap over val IMAGES says how much:
draw n images with replacement (``resample_counts``), score each draw exactly as pycocotools would
score a val set made of those images, and take percentiles. Every trial is scored on the same
draws (same seed, same ground truth), so the draws are paired and ``a - b`` of two trials' samples
gives an interval on their difference, much narrower than the two intervals side by side.

Exactness: a resample is scored as pycocotools scores a ground truth and results in which image i
appears ``counts[i]`` times, the copies renumbered so that copies of one image are adjacent and
images keep their sorted order (two copies of image 0 become ids 1 and 2, one copy of image 3 id
3, ...). Detections are matched once per image (``COCOeval.evaluate``, boxtune's
``_DifficultIgnoringEval``); each resample only re-accumulates. pycocotools' interpolated
precision at recall r is max{precision_j : recall_j >= r} over the ranked detections j, so inside
a run of true positives only the run's end counts and false positives and ignored detections
only lower precision: a detection drawn w times is one weighted step. The one place where the
order of copies changes the curve is a group of detections of ONE image with the SAME score (in
one category), true and false positives mixed: pycocotools ranks its copies d1 d2 d1 d2, not
d1 d1 d2 d2, so those groups are expanded copy by copy. Ties across images need nothing: the
stable sort keeps images in id order, and copies of an image are adjacent under the convention
above. Equal to pycocotools (``evaluate_detections_by_class``) to 1e-12, ties included.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainables.coco_eval import detections_to_coco_results, match_results
from trainables.objective import CLASS_METRICS, METRICS, Objective

__all__ = ["ImageMatches", "MetricKey", "percentile_interval", "resample_counts", "RESAMPLES", "SEED", "LEVEL",
           "paired_counts", "objective_names", "objective_samples", "resampled_objective", "objective_interval"]

RESAMPLES = 1000  # bootstrap resamples of the val images
SEED = 0  # one seed for every trial, epoch and report: the resamples are paired and reproducible
LEVEL = 0.95  # an interval's coverage

MetricKey = str | tuple[str, int]  # "AP", or ("AP", dataset category id)

_MAX_DETS = 100  # every stat here is COCOeval's maxDets=100 setting
_AREA_OF = {"APs": "small", "APm": "medium", "APl": "large"}  # other stats: area "all"
_CHUNK_ELEMENTS = 1 << 21  # resamples x detections per working array (int32/float64): 8-16 MB


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images) int64: how often each image (ground truth's sorted id order) is drawn.

    Each row is one bootstrap resample, n_images draws with replacement, so it sums to n_images.
    The same arguments give the same array: that is what makes trials scored on it paired.
    """
    if n_images < 1:
        raise ValueError(f"n_images should be >= 1, got {n_images}")
    if resamples < 1:
        raise ValueError(f"resamples should be >= 1, got {resamples}")
    draws = np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))
    rows = np.arange(resamples)[:, None] * n_images
    return np.bincount((draws + rows).ravel(), minlength=resamples * n_images).reshape(resamples, n_images)


@dataclass(frozen=True)
class _Cell:
    """One (category, area range) of COCOeval's evaluation, detections in accumulate's ranking."""

    image: np.ndarray  # (N,) image index of each detection, ranked as accumulate ranks them
    tp: np.ndarray  # (T, N) bool: matched and not ignored, per IoU threshold
    fp: np.ndarray  # (T, N) bool: unmatched and not ignored
    ig: np.ndarray  # (T, N) bool: ignored (matched to crowd/difficult/out-of-range, or out of range)
    gt_count: np.ndarray  # (I,) objects per image that count (not crowd, difficult, or out of range)
    tp_count: np.ndarray  # (I, T) true positives per image
    tie_start: np.ndarray  # (N,) first position of the detection's (image, score) group
    tie_size: np.ndarray  # (N,) size of that group


class ImageMatches:
    """Detections matched to ground truth once per image, to re-accumulate on any resample of images.

    Built by ``evaluate`` (default bbox params, VOC difficult objects ignored) or from a COCOeval
    already evaluated (``from_cocoeval``). ``metrics`` re-accumulates without matching again.
    """

    def __init__(self, image_ids: list[int], category_ids: list[int], cells: dict[tuple[int, str], _Cell],
                 iou_thrs: np.ndarray, rec_thrs: np.ndarray) -> None:
        self.image_ids = image_ids  # gt's image ids, sorted (COCOeval's params.imgIds order)
        self.category_ids = category_ids  # gt's category ids, sorted (params.catIds)
        self._cells = cells  # (category index, area label) -> _Cell
        self._iou_thrs = iou_thrs
        self._rec_thrs = rec_thrs

    @classmethod
    def evaluate(cls, gt: COCO, results: Sequence[Mapping[str, Any]]) -> ImageMatches:
        """Match ``results`` (COCO results dicts, dataset category ids; may be empty) to ``gt``."""
        return cls.from_cocoeval(match_results(gt, [dict(r) for r in results]))

    @classmethod
    def from_cocoeval(cls, coco_eval: COCOeval) -> ImageMatches:
        """From a COCOeval whose ``evaluate()`` has run with default bbox params."""
        p = coco_eval._paramsEval if coco_eval._paramsEval else coco_eval.params
        if (not coco_eval._paramsEval or p.iouType != "bbox" or not p.useCats or p.maxDets[-1] != _MAX_DETS
                or not {"all", *_AREA_OF.values()} <= set(p.areaRngLbl)
                or not {0.5, 0.75} <= {float(t) for t in p.iouThrs}):
            raise ValueError("expected a COCOeval whose evaluate() has run with bbox params that have "
                             "useCats, maxDets ending in 100, areas all/small/medium/large, IoU 0.5 and 0.75")
        n_img, n_area = len(p.imgIds), len(p.areaRng)
        cells = {}
        for k in range(len(p.catIds)):
            for a, label in enumerate(p.areaRngLbl):
                start = (k * n_area + a) * n_img
                cells[k, label] = _cell(coco_eval.evalImgs[start:start + n_img], len(p.iouThrs))
        return cls([_plain(i) for i in p.imgIds], [int(c) for c in p.catIds], cells,
                   np.asarray(p.iouThrs), np.asarray(p.recThrs))

    def metrics(self, counts: np.ndarray | None = None,
                names: Iterable[MetricKey] | None = None) -> dict[MetricKey, np.ndarray]:
        """For each resample row of ``counts`` (None: the full set once), the named numbers, (resamples,).

        Names: ``METRICS`` ("AP", "AP50", "AP75", "AR100" at area "all", "APs", "APm", "APl"), all
        at 100 detections as ``COCOeval.stats`` gives them, and (stat, category id) for
        ``CLASS_METRICS`` as ``per_class_stats`` gives them. None: all of them. NaN where
        pycocotools gives -1 (no object of that category/size in the resample). Only the cells a
        name needs are re-accumulated, so ask for what you use.
        """
        counts = self._check_counts(counts)
        if names is None:
            names = [*METRICS, *((s, c) for c in self.category_ids for s in CLASS_METRICS)]
        wanted = {key: self._cells_of(key) for key in names}
        acc = {cell: _accumulate(self._cells[cell], counts, self._rec_thrs)
               for cell in sorted({cell for _, cells in wanted.values() for cell in cells})}
        n_t, n_r = len(self._iou_thrs), len(self._rec_thrs)
        column = {"AP50": _iou_index(self._iou_thrs, 0.5), "AP75": _iou_index(self._iou_thrs, 0.75)}
        out: dict[MetricKey, np.ndarray] = {}
        for key, (stat, cells) in wanted.items():
            total, measured = np.zeros(len(counts)), np.zeros(len(counts), dtype=np.int64)
            for cell in cells:
                q, rc, ok = acc[cell]  # precision summed over recall thresholds, recall, measured
                value = rc.sum(axis=1) if stat == "AR100" else q[:, column[stat]] if stat in column else q.sum(axis=1)
                total += np.where(ok, value, 0.0)
                measured += ok
            # the mean over every measured (category, IoU, recall threshold) entry, as summarize() takes it
            per = n_t if stat == "AR100" else n_r if stat in column else n_t * n_r
            with np.errstate(invalid="ignore", divide="ignore"):
                out[key] = np.where(measured > 0, total / (per * measured), np.nan)
        return out

    def _check_counts(self, counts: np.ndarray | None) -> np.ndarray:
        n = len(self.image_ids)
        if counts is None:
            return np.ones((1, n), dtype=np.int64)
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != n or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(f"counts should be an integer array of shape (resamples, {n}), "
                             f"got {counts.dtype} {counts.shape}")
        if counts.size and counts.min() < 0:
            raise ValueError(f"counts should be >= 0, got {counts.min()}")
        return counts.astype(np.int64, copy=False)

    def _cells_of(self, key: MetricKey) -> tuple[str, list[tuple[int, str]]]:
        """A name's stat and the (category index, area) cells it averages over; ValueError if unknown."""
        stat, category = (key, None) if isinstance(key, str) else key
        if stat not in (METRICS if category is None else CLASS_METRICS):
            raise ValueError(f"unknown metric {key!r}; accepted: {', '.join(METRICS)}, "
                             f"or (one of {', '.join(CLASS_METRICS)}, category id)")
        if category is not None and category not in self.category_ids:
            raise ValueError(f"{key!r}: category {category} is not in the ground truth; "
                             f"categories: {self.category_ids}")
        ks = range(len(self.category_ids)) if category is None else [self.category_ids.index(category)]
        return stat, [(k, _AREA_OF.get(stat, "all")) for k in ks]


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples, NaN samples left out.

    A NaN sample is a resample where the number cannot be measured (no object of its class); the
    interval is then conditional on the class being present. (NaN, NaN) when every sample is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level should be in the range (0,1), got {level}")
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


@functools.lru_cache(maxsize=4)
def paired_counts(n_images: int) -> np.ndarray:
    """The resamples every trial epoch of a val set is scored on (``RESAMPLES``, seed ``SEED``):
    the same for every trial, so any two trials' samples are paired. Read-only (shared)."""
    counts = resample_counts(n_images, RESAMPLES, SEED)
    counts.flags.writeable = False
    return counts


def objective_names(objective: Objective, classes: Sequence[Any]) -> list[MetricKey]:
    """The ``ImageMatches.metrics`` names the objective reads: only those cells are re-accumulated.

    ``classes`` are the manifest's (``name``, ``dataset_id``), records or mappings.
    """
    ids = {str(_field(c, "name")): int(_field(c, "dataset_id")) for c in classes}
    return [t.metric if t.class_name is None else (t.metric, ids[t.class_name]) for t in objective.terms]


def _field(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def objective_samples(objective: Objective, metrics: Mapping[Any, np.ndarray], classes: Sequence[Any]) -> np.ndarray:
    """The objective per resample from ``ImageMatches.metrics`` arrays (a NaN term makes that resample NaN)."""
    keys = objective_names(objective, classes)
    return sum(t.weight * np.asarray(metrics[k], dtype=np.float64) for t, k in zip(objective.terms, keys, strict=True))


def resampled_objective(gt: COCO, detections: Mapping[int, Mapping[str, Any]], *, objective: Objective,
                        classes: Sequence[Any], label_to_dataset_id: Mapping[int, int]) -> np.ndarray:
    """The objective of ``detections`` (image id -> boxes, scores, labels) on each of the paired
    resamples of ``gt``'s images (``paired_counts``): matched once, then only the objective's cells
    re-accumulated."""
    results = detections_to_coco_results(detections, label_to_dataset_id=label_to_dataset_id)
    metrics = ImageMatches.evaluate(gt, results).metrics(paired_counts(len(gt.getImgIds())),
                                                         names=objective_names(objective, classes))
    return objective_samples(objective, metrics, classes)


def objective_interval(matches: ImageMatches, *, objective: Objective, classes: Sequence[Any]) -> tuple[float, float]:
    """The ``LEVEL`` interval of the objective over the val images, on the paired resamples: what
    each epoch reports as ``objective_low`` and ``objective_high``, and what a rung's evidence rule
    reads. ``matches``: the epoch's detections matched once (``ImageMatches.from_cocoeval`` of the
    COCOeval its numbers came from)."""
    metrics = matches.metrics(paired_counts(len(matches.image_ids)), names=objective_names(objective, classes))
    return percentile_interval(objective_samples(objective, metrics, classes), LEVEL)


def _cell(entries: Sequence[dict | None], n_t: int) -> _Cell:
    """One cell's per-image evaluations (``evalImgs``, images in id order) ranked as accumulate ranks."""
    n_img = len(entries)
    scores, image, matched, ignored = [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros((n_t, 0))], [np.zeros((n_t, 0))]
    gt_count = np.zeros(n_img, dtype=np.int64)
    for i, e in enumerate(entries):
        if e is None:  # neither objects nor detections of this category on the image
            continue
        d = np.asarray(e["dtScores"][:_MAX_DETS], dtype=np.float64)
        scores.append(d)
        image.append(np.full(len(d), i, dtype=np.int64))
        matched.append(np.asarray(e["dtMatches"])[:, :_MAX_DETS].reshape(n_t, -1))
        ignored.append(np.asarray(e["dtIgnore"])[:, :_MAX_DETS].reshape(n_t, -1))
        gt_count[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
    dt_scores = np.concatenate(scores)
    order = np.argsort(-dt_scores, kind="mergesort")  # accumulate's ranking, ties in image order
    dt_scores, img = dt_scores[order], np.concatenate(image)[order]
    dtm, dt_ig = np.concatenate(matched, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order]
    tp = np.logical_and(dtm, np.logical_not(dt_ig))
    fp = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
    tp_count = np.zeros((n_img, n_t), dtype=np.int64)
    np.add.at(tp_count, img, tp.T.astype(np.int64))
    # groups of one image's detections with one score: adjacent after the stable sort
    new = np.ones(len(img), dtype=bool)
    new[1:] = (img[1:] != img[:-1]) | (dt_scores[1:] != dt_scores[:-1])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(img)))
    return _Cell(img, tp, fp, np.asarray(dt_ig, dtype=bool), gt_count, tp_count,
                 np.repeat(starts, sizes), np.repeat(sizes, sizes))


@dataclass(frozen=True)
class _Layout:
    """Where the precision curve's candidate points sit, for one cell and IoU threshold.

    Candidates are points (TP, FP) of the ranked list that include every end of a run of true
    positives; any other real point of the list may be among them (it never raises a maximum).
    Ordered so that TP never decreases. ``tp_at``/``ig_at``/``all_at`` index zero-prepended
    cumulative sums (true positives, ignored, all detections): the point through that prefix.
    """

    tp_pos: np.ndarray  # positions of the true positives (columns of the TP cumulative sum)
    ig_pos: np.ndarray
    tp_at: np.ndarray  # (C,) per candidate
    ig_at: np.ndarray
    all_at: np.ndarray
    mixed: np.ndarray  # candidate columns inside mixed tie groups, expanded copy by copy
    copy: np.ndarray  # k = 1.. of each mixed candidate
    image: np.ndarray  # its image
    step: np.ndarray  # (2, M): (TP, FP) of one copy of its group
    offset: np.ndarray  # (2, M): (TP, FP) inside a copy, up to and including it


def _layout(cell: _Cell, t: int, max_copies: int) -> _Layout:
    tp, fp, ig = cell.tp[t], cell.fp[t], cell.ig[t]
    tp_through, fp_through, ig_through = np.cumsum(tp), np.cumsum(fp), np.cumsum(ig)
    start = cell.tie_start
    last = start + cell.tie_size - 1
    before = start - 1  # prefix through the detection before the group (-1: none)
    tp_before = np.where(before >= 0, tp_through[np.maximum(before, 0)], 0)
    fp_before = np.where(before >= 0, fp_through[np.maximum(before, 0)], 0)
    group_tp, group_fp = tp_through[last] - tp_before, fp_through[last] - fp_before
    in_mixed = (cell.tie_size > 1) & (group_tp > 0) & (group_fp > 0)
    plain = np.flatnonzero(tp & ~in_mixed)  # the weighted point through a plain TP is a real point
    expand = np.flatnonzero(tp & in_mixed)
    # order: plain points by position, a mixed group's points at its start, copy-major
    copies = np.arange(1, max_copies + 1)
    key_pos = np.concatenate([plain, np.repeat(start[expand][None], max_copies, 0).ravel()])
    key_copy = np.concatenate([np.zeros(len(plain), np.int64), np.repeat(copies, len(expand))])
    key_own = np.concatenate([plain, np.tile(expand, max_copies)])
    order = np.lexsort((key_own, key_copy, key_pos))
    src = np.concatenate([plain, np.tile(expand, max_copies)])[order]
    is_mixed = key_copy[order] > 0
    through = np.where(is_mixed, before[src], src)  # a mixed point builds on the prefix before its group
    safe = np.maximum(through, 0)
    return _Layout(
        tp_pos=np.flatnonzero(tp), ig_pos=np.flatnonzero(ig),
        tp_at=np.where(through >= 0, tp_through[safe], 0),
        ig_at=np.where(through >= 0, ig_through[safe], 0),
        all_at=through + 1,
        mixed=np.flatnonzero(is_mixed), copy=key_copy[order][is_mixed], image=cell.image[src[is_mixed]],
        step=np.stack([group_tp[src[is_mixed]], group_fp[src[is_mixed]]]),
        offset=np.stack([tp_through[src[is_mixed]] - tp_before[src[is_mixed]],
                         fp_through[src[is_mixed]] - fp_before[src[is_mixed]]]),
    )


def _accumulate(cell: _Cell, counts: np.ndarray, rec_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cell re-accumulated per resample: interpolated precision summed over recall thresholds
    (B, T), recall (B, T), and whether pycocotools measures it at all (B,; else it leaves -1)."""
    n_b, n_t = len(counts), cell.tp.shape[0]
    gt = counts @ cell.gt_count  # objects that count, per resample (pycocotools' npig)
    measured = gt > 0  # else pycocotools leaves -1
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (counts @ cell.tp_count) / gt[:, None]
    precision = np.zeros((n_b, n_t))
    has_tp = cell.tp.any(axis=1)
    if not has_tp.any():
        return precision, recall, measured
    grouped = np.unique(cell.image[cell.tie_size > 1])
    max_copies = int(counts[:, grouped].max(initial=1))
    layouts = [_layout(cell, t, max_copies) if has_tp[t] else None for t in range(n_t)]
    width = max(len(cell.image), *(len(lay.tp_at) for lay in layouts if lay is not None))
    chunk = max(1, _CHUNK_ELEMENTS // width)
    for lo in range(0, n_b, chunk):
        c = counts[lo:lo + chunk].astype(np.int32)
        weight = c[:, cell.image]  # copies of each detection
        every = _prefix_sums(weight)
        steps = _recall_steps(np.maximum(gt[lo:lo + chunk], 1), rec_thrs)
        for t, lay in enumerate(layouts):
            if lay is None:
                continue  # no true positive at this IoU: precision 0 at every recall
            tps = _prefix_sums(weight[:, lay.tp_pos])[:, lay.tp_at]
            fps = every[:, lay.all_at] - tps
            if len(lay.ig_pos):
                fps -= _prefix_sums(weight[:, lay.ig_pos])[:, lay.ig_at]
            if len(lay.mixed):
                n = c[:, lay.image]  # copies of the group's image
                drawn = lay.copy <= n
                tps[:, lay.mixed] += np.where(drawn, (lay.copy - 1) * lay.step[0] + lay.offset[0], n * lay.step[0])
                fps[:, lay.mixed] += np.where(drawn, (lay.copy - 1) * lay.step[1] + lay.offset[1], n * lay.step[1])
            precision[lo:lo + chunk, t] = _interpolate(tps, fps, steps).sum(axis=1)
    return precision, recall, measured


def _prefix_sums(x: np.ndarray) -> np.ndarray:
    """Cumulative sums along axis 1 with a zero column in front: column j sums the first j."""
    out = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.int64)
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


def _recall_steps(gt: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, R): the fewest true positives v with v / gt >= each recall threshold, in float64 as
    pycocotools compares them (so ``TP >= v`` is exactly its ``rc >= r``)."""
    n = gt[:, None]
    v = np.maximum(np.ceil(rec_thrs[None] * n).astype(np.int64), 0)
    for _ in range(8):
        down = (v > 0) & ((v - 1) / n >= rec_thrs)
        up = ~down & (v / n < rec_thrs)
        if not (down.any() or up.any()):
            return v
        v = v - down + up
    raise AssertionError("recall thresholds did not settle")  # v starts within 1 of the answer


def _interpolate(tps: np.ndarray, fps: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(B, R) interpolated precision: max{precision_j : TP_j >= steps[r]}, 0 where none (as
    pycocotools leaves q at 0 past the last detection). Candidates are ordered by TP."""
    tp, fp = tps.astype(np.float64), fps.astype(np.float64)
    pr = tp / (fp + tp + np.spacing(1))  # pycocotools' expression, operation for operation
    best = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # max over this point and later ones
    n_b, n_c = tps.shape
    span = int(max(tps.max(initial=0), steps.max(initial=0))) + 1
    row = np.arange(n_b, dtype=np.int64)[:, None] * span
    first = np.searchsorted((tps + row).ravel(), (steps + row).ravel(), side="left").reshape(steps.shape)
    first -= np.arange(n_b)[:, None] * n_c
    found = first < n_c
    return np.where(found, np.take_along_axis(best, np.minimum(first, n_c - 1), axis=1), 0.0)


def _iou_index(iou_thrs: np.ndarray, threshold: float) -> int:
    return int(np.where(iou_thrs == threshold)[0][0])  # the lookup summarize() does


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value

