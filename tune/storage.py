"""Moved to ``tune.run.storage``; kept so that runs whose ``tuner.pkl`` pickled a ``RunStorage`` (inside the retention callback) by this path resume."""

from tune.run.storage import RunStorage

__all__ = ["RunStorage"]
