"""A ``boxtune train`` folder's best epoch, described as the ranking describes a sweep's winner.

``boxtune export``, ``boxtune report`` and ``boxtune predict`` (through an export) take a train
folder as they take a sweep folder. What a sweep's ranking gives its winner (the objective, its
95% interval over bootstrap resamples of the val images, the test split's numbers), a train run
gives its best epoch, from the same stored detections and the same resamples
(``tune.run.intervals``). A one-run "ranking" has no leader to be told apart from, so those
fields are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainables.objective import SCORE, parse_objective
from tune.run.folder import TrainFolder

__all__ = ["TrainBest", "train_best"]


@dataclass
class TrainBest:
    """The best epoch of a train run and what describes it."""

    folder: TrainFolder
    epoch: int
    epochs: int  # epochs run
    metrics: dict[str, Any]  # the epoch's val numbers, as metrics.jsonl holds them
    objective: str  # the objective's label (``AP``, ``0.9*AP + 0.1*AP50``)
    value: float
    score: float
    ci_low: float = math.nan  # NaN where the detections or the manifest are not stored
    ci_high: float = math.nan
    val_images: int | None = None
    resamples: int | None = None
    threads: int | None = None  # torch threads the run used (train.json; None before it was recorded)
    test: dict[str, Any] | None = None  # test_results.json when its epoch is this one

    def ranking(self) -> dict[str, Any]:
        """The export's ``ranking`` metadata, with a sweep winner's keys: rank 1 of 1, no leader to compare with."""
        return {"rank": 1, "trials": 1, "objective": self.objective, "value": self.value, "score": self.score,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "leader_beats": None, "distinguishable": None,
                "val_images": self.val_images, "resamples": self.resamples, "leader": None,
                "not_distinguishable_from_leader": None}


def train_best(run: str) -> TrainBest:
    """Read train folder ``run``'s best epoch, its interval (from the stored detections) and its test numbers."""
    from tune.run.intervals import RESAMPLES, interval, run_objective, val_ground_truth

    folder = TrainFolder(run)
    folder.require_trained(run)
    best, info = folder.best(), folder.info()
    epoch, metrics = int(best["epoch"]), dict(best["metrics"])
    objective = parse_objective(info.get("metric", "AP"), key="metric")
    out = TrainBest(folder, epoch, len(folder.history()), metrics, objective.label, float(objective.value(metrics)),
                    float(metrics.get(SCORE, objective.score(metrics))), threads=info.get("threads"))
    detections = folder.read_detections(epoch)
    if detections is not None and folder.has_manifest():
        manifest = folder.manifest()
        gt = val_ground_truth(manifest)
        out.ci_low, out.ci_high = interval(run_objective(gt, detections, manifest, objective))
        out.val_images, out.resamples = len(gt.getImgIds()), RESAMPLES
    test = folder.test_results()
    if test is not None and int(test["epoch"]) == epoch:
        out.test = test
    return out
