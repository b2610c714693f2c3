"""The service: the ``boxtune`` CLI, sweep orchestration on Ray Tune, reports, export and predict.

Floors, imports pointing down only (``docs/architecture.md``):

* top: ``cli``, ``demo``, ``workflow`` (a sweep from config to ranking);
* three wings that never import each other: ``launch`` (sweep, trainable, Ray session,
  preflights, live table, retention, resume), ``results`` (report, plots, TensorBoard, the test
  split, best config), ``ship`` (export, predict);
* ``run``: the owner of run folders (file names, readers, the loaded view, the ranking, the best
  checkpoint);
* ``config`` and ``trial_config``: the config schema and the one trial-config builder.

``tune.progress``, ``tune.retention`` and ``tune.storage`` stay importable at their old paths:
a run's ``tuner.pkl`` pickles its callbacks by those paths, and ``boxtune resume`` unpickles them.
"""

from __future__ import annotations

import importlib

# Names load on first use (PEP 562), so importing one submodule (the CLI, the config schema)
# does not import torch, optuna and Ray for the whole package.
_EXPORTS = {
    "SweepConfig": "tune.config",
    "TrainConfig": "tune.config",
    "load_config": "tune.config",
    "load_sweep": "tune.run.view",
    "rank_trials": "tune.run.ranking",
    "resume_sweep": "tune.workflow",
    "run_sweep": "tune.workflow",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
