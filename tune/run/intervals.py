"""How far to trust the ranking: a 95% interval on each trial's objective, and which trials cannot
be told apart from the leader, from a paired bootstrap over the val images.

Every trial's best epoch has its val detections stored (``trainables.detections``). They are
matched to the ground truth once per image (``trainables.intervals.ImageMatches``), then
re-accumulated for ``RESAMPLES`` resamples of the val images, drawn with replacement. All trials
use the same resamples (seed ``SEED``), so the difference between two trials has its own
distribution: the leader "beats" a trial in the share of resamples where its objective is
higher. A trial the leader beats in fewer than 95% of them is **not distinguishable from the
leader** on this val set. The point estimate stays pycocotools' number on the full set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainables.intervals import (
    LEVEL,
    RESAMPLES,
    SEED,
    objective_names,
    objective_samples,
    paired_counts,
    resampled_objective,
)
from trainables.objective import Objective

__all__ = ["RESAMPLES", "SEED", "LEVEL", "BEATS", "TrialInterval", "Intervals", "objective_samples", "objective_names",
           "resampled_objective", "run_objective", "leader_share", "paired_intervals", "interval", "val_ground_truth", "trial_matches",
           "PairedSamples", "class_intervals"]

BEATS = 0.95  # the leader is told apart from a trial it beats in at least this share of resamples


@dataclass(frozen=True)
class TrialInterval:
    low: float  # the interval's ends (percentiles 2.5 and 97.5 of the resampled objective)
    high: float
    beaten: float  # share of resamples in which the leader's objective is higher; NaN for the leader

    @property
    def distinguishable(self) -> bool:
        """Whether the leader beats this trial in at least ``BEATS`` of the paired resamples (never
        for the leader itself)."""
        return not math.isnan(self.beaten) and self.beaten >= BEATS


@dataclass
class Intervals:
    """The ranking's intervals: per trial id, plus what they were computed on."""

    images: int  # val images
    resamples: int
    leader: str | None
    trials: dict[str, TrialInterval] = field(default_factory=dict)  # those with stored detections, best first
    ranks: dict[str, int] = field(default_factory=dict)  # their places in the ranking
    ranked: int = 0  # trials ranked (with a finished epoch), with or without stored detections

    def tied_with_leader(self) -> list[str]:
        """The trials with an interval (the leader first) that cannot be told apart from the leader."""
        return [t for t, iv in self.trials.items() if not iv.distinguishable]


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of ``samples`` (NaN resamples left out; NaN, NaN when none is finite)."""
    from trainables.intervals import percentile_interval

    return percentile_interval(samples, level)


def leader_share(leader: np.ndarray, other: np.ndarray) -> float:
    """The share of paired resamples (both measured) in which ``leader`` scores higher; NaN when none is."""
    both = np.isfinite(leader) & np.isfinite(other)
    return float(np.mean(leader[both] > other[both])) if both.any() else math.nan


def paired_intervals(samples: Mapping[str, np.ndarray], order: Sequence[str], *, images: int) -> Intervals:
    """Intervals and marks for trials ``order`` (ranked, best first; the first is the leader) from
    their objective's samples on the same resamples."""
    present = [t for t in order if t in samples]
    leader = present[0] if present else None
    out = Intervals(images=images, resamples=len(next(iter(samples.values()))) if samples else 0, leader=leader,
                    ranks={t: order.index(t) + 1 for t in present}, ranked=len(order))
    for trial in present:
        low, high = interval(samples[trial])
        # the leader: NaN, not distinguishable from itself
        beaten = math.nan if trial == leader else leader_share(samples[leader], samples[trial])
        out.trials[trial] = TrialInterval(low, high, beaten)
    return out


def val_ground_truth(manifest):
    """The val split's ground truth, as every trial evaluated against it (``trainables.loaders``)."""
    from trainables.coco_eval import build_coco_gt

    return build_coco_gt(manifest.records("val"), [(c.dataset_id, c.name) for c in manifest.classes])


def trial_matches(gt, detections: Mapping[int, Mapping[str, Any]], manifest):
    """A trial epoch's stored detections matched once per image (``trainables.intervals.ImageMatches``)."""
    from trainables.coco_eval import detections_to_coco_results
    from trainables.intervals import ImageMatches

    results = detections_to_coco_results(detections, label_to_dataset_id=manifest.label_to_dataset_id)
    return ImageMatches.evaluate(gt, results)


def run_objective(gt, detections: Mapping[int, Mapping[str, Any]], manifest, objective: Objective) -> np.ndarray:
    """``resampled_objective`` of a trial epoch's stored detections, against its run's manifest."""
    return resampled_objective(gt, detections, objective=objective, classes=manifest.classes,
                               label_to_dataset_id=manifest.label_to_dataset_id)


class PairedSamples:
    """Resampled objectives of trial epochs in one run folder, read from their stored detections and
    cached: what the live table compares a finished trial with the sweep's best by."""

    def __init__(self, run: str):
        from tune.run.folder import RunFolder

        self.folder = RunFolder.at(run)
        self._setup = None
        self._samples: dict[tuple[str, int], np.ndarray | None] = {}

    def _ready(self):
        if self._setup is None:
            from trainables.objective import parse_objective

            manifest = self.folder.manifest()
            self._setup = manifest, val_ground_truth(manifest), parse_objective(self.folder.config().search.metric)
        return self._setup

    def samples(self, trial_dir: str, epoch: int) -> np.ndarray | None:
        """The objective per resample of a trial's epoch; None while its detections are not in storage."""
        key = (trial_dir, int(epoch))
        if self._samples.get(key) is None:
            manifest, gt, objective = self._ready()
            detections = self.folder.read_detections(trial_dir, epoch)
            self._samples[key] = None if detections is None else run_objective(gt, detections, manifest, objective)
        return self._samples[key]

    def beaten(self, leader: tuple[str, int], other: tuple[str, int]) -> float | None:
        """The share of paired resamples in which ``leader`` (trial folder, epoch) scores higher than
        ``other``; None while either's detections are not in storage, or no resample measured both."""
        a, b = self.samples(*leader), self.samples(*other)
        share = math.nan if a is None or b is None else leader_share(a, b)
        return None if math.isnan(share) else share


def class_intervals(folder, manifest, trial_dir: str, epoch: int,
                    stats=("AP", "AP50", "AR100")) -> dict[str, dict[str, tuple[float, float, float]]] | None:
    """Per class name, per stat: (pycocotools' number on the full val set, interval low, high), from a
    trial epoch's stored detections; None when they are not stored."""
    detections = folder.read_detections(trial_dir, epoch)
    if detections is None:
        return None
    gt = val_ground_truth(manifest)
    matches = trial_matches(gt, detections, manifest)
    names = [(stat, int(c.dataset_id)) for c in manifest.classes for stat in stats]
    full = matches.metrics(None, names=names)
    resampled = matches.metrics(paired_counts(len(gt.getImgIds())), names=names)
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for c in manifest.classes:
        out[str(c.name)] = {stat: (float(full[(stat, int(c.dataset_id))][0]),
                                   *interval(np.asarray(resampled[(stat, int(c.dataset_id))], dtype=np.float64)))
                            for stat in stats}
    return out
