"""Moved to ``tune.launch.retention``; kept so that runs whose ``tuner.pkl`` pickled the retention callback by this path resume."""

from tune.launch.retention import CheckpointRetention

__all__ = ["CheckpointRetention"]
