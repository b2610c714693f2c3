"""The service: the ``boxtune`` CLI, sweep orchestration on Ray Tune, reports, export and predict."""

from __future__ import annotations

import importlib

# Names load on first use (PEP 562), so importing one submodule (the CLI, the config schema)
# does not import torch, optuna and Ray for the whole package.
_EXPORTS = {
    "SweepConfig": "tune.config",
    "TrainConfig": "tune.config",
    "load_config": "tune.config",
    "load_sweep": "tune.report",
    "rank_trials": "tune.report",
    "resume_sweep": "tune.sweep",
    "run_sweep": "tune.sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
