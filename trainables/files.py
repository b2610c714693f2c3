"""The names of the files one trial writes: its checkpoint, and a ``boxtune train`` folder's layout.

A sweep's own files (``sweep.yaml``, ``ranking.parquet``, ...) are named in ``tune.run.layout``,
which also re-exports these; nothing else spells a file name.

A ``boxtune train`` folder (``trainables.reporting.LocalReporter``)::

    metrics.jsonl                 one JSON object per epoch
    best.json                     {"epoch": N, "metrics": {...}}: the best epoch by score
    checkpoints/epoch_0007/       the best and the latest epoch's checkpoint.pt
    detections/epoch_0007.parquet every evaluated epoch's val detections (also in a sweep's trial folders)
"""

from __future__ import annotations

__all__ = ["CHECKPOINT_FILE", "METRICS_FILE", "BEST_FILE", "CHECKPOINTS_DIR", "DETECTIONS_DIR", "epoch_checkpoint_dir",
           "detections_file"]

CHECKPOINT_FILE = "checkpoint.pt"  # inside every checkpoint folder, Ray's or a train folder's
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.json"
CHECKPOINTS_DIR = "checkpoints"
DETECTIONS_DIR = "detections"  # beside the checkpoints, never inside one: checkpoint retention leaves it


def epoch_checkpoint_dir(epoch: int) -> str:
    """An epoch's checkpoint folder in a ``boxtune train`` folder, relative to it: ``checkpoints/epoch_0007``."""
    return f"{CHECKPOINTS_DIR}/epoch_{int(epoch):04d}"


def detections_file(epoch: int) -> str:
    """An epoch's stored val detections, relative to the trial's folder: ``detections/epoch_0007.parquet``."""
    return f"{DETECTIONS_DIR}/epoch_{int(epoch):04d}.parquet"
