"""Moved to ``tune.launch.progress``; kept so that runs whose ``tuner.pkl`` pickled the live table by this path resume."""

from tune.launch.progress import ProgressTable

__all__ = ["ProgressTable"]
