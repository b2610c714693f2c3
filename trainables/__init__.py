"""One trial: data, the pruned model, freezing, optimisation, augmentation, COCO evaluation, the loop.

Nothing here imports ``tune`` or ``search_spaces``; the only module that talks to Ray is
``trainables.ray_reporter``, imported by ``tune`` alone.
"""

from __future__ import annotations

import importlib

# Names load on first use (PEP 562), so importing one submodule (the CLI, the config schema)
# does not import torch, optuna and Ray for the whole package.
_EXPORTS = {
    "TrialState": "trainables.checkpoint",
    "load_checkpoint": "trainables.checkpoint",
    "save_checkpoint": "trainables.checkpoint",
    "COCO_STAT_NAMES": "trainables.coco_eval",
    "build_coco_gt": "trainables.coco_eval",
    "evaluate_detections": "trainables.coco_eval",
    "evaluate_detections_by_class": "trainables.coco_eval",
    "per_class_stats": "trainables.coco_eval",
    "Objective": "trainables.objective",
    "parse_objective": "trainables.objective",
    "check_measurable": "trainables.objective",
    "HParams": "trainables.config",
    "ModelConfig": "trainables.config",
    "TrainingConfig": "trainables.config",
    "TrialConfig": "trainables.config",
    "parse_trial_config": "trainables.config",
    "BoxtuneError": "trainables.errors",
    "ConfigError": "trainables.errors",
    "DataError": "trainables.errors",
    "NonFiniteLossError": "trainables.errors",
    "TrainingError": "trainables.errors",
    "apply_freeze": "trainables.freeze",
    "max_freeze_depth": "trainables.freeze",
    "TrialResources": "trainables.loop",
    "run_trial": "trainables.loop",
    "build_inference_model": "trainables.model",
    "build_model": "trainables.model",
    "LocalReporter": "trainables.reporting",
    "Reporter": "trainables.reporting",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
