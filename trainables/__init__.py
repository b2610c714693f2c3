"""One trial: data, the pruned model, freezing, optimisation, augmentation, COCO evaluation, the loop.

Nothing here imports ``tune`` or ``search_spaces``; the only module that talks to Ray is
``trainables.ray_reporter``, imported by ``tune`` alone.
"""

from trainables.checkpoint import TrialState, load_checkpoint, save_checkpoint
from trainables.coco_eval import COCO_STAT_NAMES, build_coco_gt, evaluate_detections
from trainables.config import HParams, ModelConfig, TrainingConfig, TrialConfig, parse_trial_config
from trainables.errors import BoxtuneError, ConfigError, DataError, NonFiniteLossError, TrainingError
from trainables.freeze import apply_freeze, max_freeze_depth
from trainables.loop import TrialResources, run_trial
from trainables.model import build_inference_model, build_model
from trainables.reporting import LocalReporter, Reporter

__all__ = [
    "COCO_STAT_NAMES",
    "BoxtuneError",
    "ConfigError",
    "DataError",
    "HParams",
    "LocalReporter",
    "ModelConfig",
    "NonFiniteLossError",
    "Reporter",
    "TrainingConfig",
    "TrainingError",
    "TrialConfig",
    "TrialResources",
    "TrialState",
    "apply_freeze",
    "build_coco_gt",
    "build_inference_model",
    "build_model",
    "evaluate_detections",
    "load_checkpoint",
    "max_freeze_depth",
    "parse_trial_config",
    "run_trial",
    "save_checkpoint",
]
