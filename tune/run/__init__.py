"""The owner of run folders: file names, one reader per file, a loaded view of a sweep, the ranking,
and the best checkpoint. Every other part of ``tune`` asks it and never opens a file by a name it
spelt itself (see ``layout`` for the folder's files).

Imports: ``tune.config`` and ``trainables`` below it; the three wings (``tune.launch``,
``tune.results``, ``tune.ship``) above it.
"""

from __future__ import annotations

import importlib

# loaded on first use (PEP 562): `tune.run.layout` alone imports nothing heavy
_EXPORTS = {
    "RunStorage": "tune.run.storage",
    "RunFolder": "tune.run.folder",
    "SweepView": "tune.run.view",
    "TrialView": "tune.run.view",
    "load_sweep": "tune.run.view",
    "rank_trials": "tune.run.ranking",
    "rank_order": "tune.run.ranking",
    "write_ranking": "tune.run.ranking",
    "pick_trial": "tune.run.ranking",
    "best_checkpoint": "tune.run.checkpoints",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
