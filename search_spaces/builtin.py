"""The built-in search spaces: ``default``, ``seed`` and ``quick``.

A space is an Optuna define-by-run function of ``trial``: it only calls ``trial.suggest_*``
inside plain ``if`` blocks (a branch's parameters live under its categorical choice, as
``trainables.config`` requires), does no computation, and returns the constants of the sampled
config (or None). Every name is an ``HParams`` field name or one of ``PARAM_ALIASES``, and
never changes.

Three facts of the sweep bound the ranges, and all are fixed before it starts:

* ``max_freeze_depth``: the deepest valid ``freeze_depth`` depends on the architecture
  (ResNet-50 FPN: 8);
* ``epochs``: an epoch-based decay (``step_size``, ``milestones``) must fall inside the run, and
  one epoch leaves nothing to decay at all;
* ``pretrained``: whether the trials start from a trained detector (``model.weights``). From
  random weights a frozen stage holds random features, so ``default`` and ``quick`` freeze no
  deeper than depth 2; from a trained one ``default`` searches every depth and ``quick`` depths 0,
  2 and 5 (``benchmarks/bench_transfer.py --part 2``).

:func:`make_space` takes them and returns the space; the plain functions :func:`default`,
:func:`seed` and :func:`quick` are those spaces for a pretrained ResNet-50 FPN
(``max_freeze_depth=8``) and the default of ``TrainingConfig.epochs``. ``make_space`` returns
``functools.partial`` objects over module-level functions, so spaces pickle (Ray checkpoints its
searcher with the space). :func:`first_trials` gives the configs a sweep evaluates before it
samples (``default``: the `seed` SGD recipe).

Learning rates are searched under one name per optimiser, ``lr_sgd`` (SGD) and ``lr_adam`` (Adam
and AdamW), and :func:`to_hparams` maps both back to ``HParams.lr`` (``tune.trial_config`` applies it
to every sampled config). Under one shared name, Optuna's TPESampler, which models each parameter
on its own and builds its density from every trial that has the name, whatever its range, would
put SGD's rates (1e-3..5e-2) and Adam's (1e-5..1e-3) into one density: good SGD trials would pull
the Adam rates it proposes to the top of Adam's range, where Adam is least stable.
``multivariate=True, group=True`` does not separate them: Optuna 5.0 groups the shared name with
``optimizer`` but keeps one distribution for it (the range of the last branch seen), so the other
branch's rates fall back to independent sampling; and ``group`` is still experimental there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.config import TrainingConfig
from trainables.errors import ConfigError

__all__ = [
    "BUILTIN_SPACES",
    "DEFAULT_EPOCHS",
    "RESNET50_FPN_MAX_FREEZE_DEPTH",
    "default",
    "first_trials",
    "make_space",
    "quick",
    "PARAM_ALIASES",
    "seed",
    "to_hparams",
]

RESNET50_FPN_MAX_FREEZE_DEPTH = 8
DEFAULT_EPOCHS: int = TrainingConfig.model_fields["epochs"].default

Space = Callable[[Any], "dict[str, Any] | None"]

# searched name -> HParams field: one learning-rate parameter per optimiser family, so that each
# has its own density in the sampler
PARAM_ALIASES: dict[str, str] = {"lr_sgd": "lr", "lr_adam": "lr"}


def to_hparams(sampled: dict[str, Any]) -> dict[str, Any]:
    """A sampled config with the per-optimiser names (``PARAM_ALIASES``) renamed to their ``HParams`` field.

    Raises ConfigError when a config holds two names for one field (``lr_sgd`` and ``lr``).
    """
    out = {k: v for k, v in sampled.items() if k not in PARAM_ALIASES}
    for alias, field in PARAM_ALIASES.items():
        if alias not in sampled:
            continue
        if field in out:
            raise ConfigError(f"search space: {alias!r} and {field!r} both set {field!r}; search one of them")
        out[field] = sampled[alias]
    return out


@dataclass(frozen=True)
class _Bounds:
    """Everything a space's ranges depend on, worked out once before the sweep."""

    max_freeze_depth: int
    epochs: int
    schedules: tuple[str, ...]  # the schedules that can act within `epochs`
    milestones: tuple[int, ...]  # multistep's constant milestones, in epochs
    quick_freeze_depths: tuple[int, ...]
    deepest_freeze: int  # default's freeze_depth range is 0..deepest_freeze


def _bounds(*, max_freeze_depth: int, epochs: int, pretrained: bool = False) -> _Bounds:
    if max_freeze_depth < 0:
        raise ValueError(f"max_freeze_depth should be >= 0, got {max_freeze_depth}")
    if epochs < 1:
        raise ValueError(f"epochs should be >= 1, got {epochs}")
    # multistep at 2/3 and 8/9 of the run, as in torchvision's detection recipe (26 epochs: 16, 22)
    milestones = tuple(sorted({m for m in (round(epochs * 2 / 3), round(epochs * 8 / 9)) if 1 <= m < epochs}))
    epoch_based = ("step", "multistep", "exponential") if epochs >= 2 else ()
    schedules = ("constant", *epoch_based, "cosine", "onecycle")
    # quick, from random weights: everything trains, the stem frozen, stem and first stage frozen;
    # deeper would freeze random features. From a pretrained detector: everything trains, stem and
    # first stage frozen (torchvision's default fine-tuning depth), and the whole backbone body
    # frozen, best on both targets of ``bench_transfer.py --part 2``. Not depth 8 (only the class
    # and box layers train): 7x faster and as good on the generated target, but AP 0 on the
    # raccoon photos, whose class the source's frozen box head had never seen
    wanted = (0, 2, 5) if pretrained else (0, 1, 2)
    depths = tuple(sorted({min(d, max_freeze_depth) for d in wanted}))
    # default: every depth from a pretrained detector; from random weights, as quick, no deeper than 2
    deepest = max_freeze_depth if pretrained else min(2, max_freeze_depth)
    return _Bounds(max_freeze_depth, epochs, schedules, milestones, depths, deepest)


def _default_space(trial: Any, *, bounds: _Bounds) -> dict[str, Any] | None:
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam", "adamw"])
    # each optimiser's own lr range (Adam at SGD's rates diverges), each under its own name so
    # that the sampler models each on its own (to_hparams makes both HParams.lr)
    if optimizer == "sgd":
        trial.suggest_float("lr_sgd", 1e-3, 5e-2, log=True)
    else:
        # Adam and AdamW at 2e-3 or more learnt next to nothing from a pretrained start (bench_transfer
        # part 4: AP 0.001 to 0.15, four trials of four); the best were at 1e-5 to 2.5e-4
        trial.suggest_float("lr_adam", 1e-5, 1e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("decay_norm_and_bias", [True, False])
    if optimizer == "sgd":
        trial.suggest_float("momentum", 0.8, 0.99)
        trial.suggest_categorical("nesterov", [False, True])
    if optimizer in ("adam", "adamw"):
        trial.suggest_float("beta1", 0.8, 0.95)
        trial.suggest_float("beta2", 0.99, 0.9999)
        trial.suggest_float("eps", 1e-10, 1e-6, log=True)

    constants: dict[str, Any] = {}
    schedule = trial.suggest_categorical("schedule", list(bounds.schedules))
    if schedule == "step":
        trial.suggest_int("step_size", 1, bounds.epochs - 1)
    if schedule == "multistep":
        constants["milestones"] = list(bounds.milestones)
    if schedule in ("step", "multistep", "exponential"):
        trial.suggest_float("gamma", 0.1, 0.9)  # per decay, multiplicative
    if schedule == "cosine":
        trial.suggest_float("eta_min_factor", 0.0, 0.1)
    if schedule == "onecycle":
        trial.suggest_float("pct_start", 0.1, 0.5)
        trial.suggest_float("div_factor", 5.0, 50.0, log=True)
        trial.suggest_float("final_div_factor", 10.0, 1e4, log=True)
    if schedule != "onecycle":  # one-cycle has its own warm-up
        trial.suggest_int("warmup_iters", 0, 500, step=50)  # iterations

    trial.suggest_int("freeze_depth", 0, bounds.deepest_freeze)
    trial.suggest_categorical("batch_size", [2, 4, 8])

    # augmentation: probabilities as choices, magnitudes only where their transform is on
    trial.suggest_categorical("hflip_p", [0.0, 0.5])
    trial.suggest_categorical("vflip_p", [0.0, 0.5])
    jitter_p = trial.suggest_categorical("jitter_p", [0.0, 0.5, 0.8])
    if jitter_p > 0:
        trial.suggest_float("brightness", 0.05, 0.4)
        trial.suggest_float("contrast", 0.05, 0.4)
        trial.suggest_float("saturation", 0.05, 0.4)
        trial.suggest_float("hue", 0.0, 0.1)
    trial.suggest_categorical("crop_p", [0.0, 0.5])
    zoom_out_p = trial.suggest_categorical("zoom_out_p", [0.0, 0.5])
    if zoom_out_p > 0:
        trial.suggest_float("zoom_out_max", 1.5, 3.0)  # canvas side / image side
    scale_jitter_p = trial.suggest_categorical("scale_jitter_p", [0.0, 0.5])
    if scale_jitter_p > 0:
        trial.suggest_float("scale_min", 0.5, 0.9)
        trial.suggest_float("scale_max", 1.1, 2.0)
    return constants or None


def _seed_space(trial: Any, *, bounds: _Bounds) -> dict[str, Any] | None:
    """The two hand-tuned recipes; only the optimiser is searched."""
    optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    if optimizer == "adam":
        return {
            "lr": 0.005,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "weight_decay": 5e-4,
            "schedule": "exponential",
            "gamma": 0.65,  # per epoch, multiplicative
        }
    return {
        "lr": 0.005,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "step_size": 3,  # epochs
        "gamma": 0.1,
    }


def _quick_space(trial: Any, *, bounds: _Bounds) -> dict[str, Any] | None:
    """Small and fast: learns on the demo data in a few CPU epochs, even from random weights.

    Each optimiser gets the learning-rate range it learns with (SGD from random init wants
    ~0.01-0.04, Adam ~1e-3), under its own name (``lr_sgd``, ``lr_adam``; see ``to_hparams``).
    Freeze depths: 0, 1, 2 from random weights; 0, 2, 5 from a pretrained detector (see
    ``_bounds``).
    """
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    if optimizer == "sgd":
        trial.suggest_float("lr_sgd", 1e-2, 4e-2, log=True)
    else:
        trial.suggest_float("lr_adam", 3e-4, 2e-3, log=True)
    trial.suggest_categorical("hflip_p", [0.0, 0.5])
    trial.suggest_categorical("freeze_depth", list(bounds.quick_freeze_depths))
    return {"batch_size": 4, "warmup_iters": 20}


def first_trials(name: str, *, epochs: int | None = None) -> list[dict[str, Any]]:
    """The configs a sweep of built-in space ``name`` evaluates before sampling: a known-good start.

    ``default`` starts from the `seed` space's SGD recipe, under the default space's names and
    with its step at half the run (``step_size`` 3 at 6 epochs, the run it was measured on):
    there that one recipe reached a better AP than 16 TPE trials of ``default``
    (``benchmarks/bench_transfer.py --part 4``). Everything it does not set (the augmentation's
    magnitudes, for one) is sampled. Nothing for runs too short to decay, nor for other spaces.
    """
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if name != "default" or epochs < 2:
        return []
    return [{
        "optimizer": "sgd", "lr_sgd": 0.005, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
        "decay_norm_and_bias": True, "schedule": "step", "step_size": max(1, epochs // 2), "gamma": 0.1,
        "warmup_iters": 0, "freeze_depth": 0, "batch_size": 2, "hflip_p": 0.5, "vflip_p": 0.0, "jitter_p": 0.0,
        "crop_p": 0.0, "zoom_out_p": 0.0, "scale_jitter_p": 0.0,
    }]


_SPACES = {"default": _default_space, "seed": _seed_space, "quick": _quick_space}
BUILTIN_SPACES: tuple[str, ...] = tuple(_SPACES)


def make_space(name: str, *, max_freeze_depth: int, epochs: int | None = None, pretrained: bool = False) -> Space:
    """The built-in space ``name`` for an architecture's ``max_freeze_depth`` and the run's epochs.

    ``epochs`` None means ``TrainingConfig``'s default. ``pretrained``: the trials start from a
    trained detector (``model.weights`` set); from random weights ``default`` and ``quick`` freeze
    no deeper than depth 2, since a deeper frozen stage would hold random features. Raises
    ConfigError for an unknown name and for the ``seed`` recipes when the run is too short for
    their step schedule to act.
    """
    if name not in _SPACES:
        raise ConfigError(f"search space {name!r}: unknown built-in; accepted: {', '.join(BUILTIN_SPACES)}")
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if name == "seed" and epochs <= 3:
        raise ConfigError(
            f"search space 'seed': its SGD recipe decays at epoch 3 (step_size 3), which a run of "
            f"{epochs} epochs never reaches; use training.epochs >= 4"
        )
    bounds = _bounds(max_freeze_depth=max_freeze_depth, epochs=epochs, pretrained=pretrained)
    return functools.partial(_SPACES[name], bounds=bounds)


_RESNET50_BOUNDS = _bounds(max_freeze_depth=RESNET50_FPN_MAX_FREEZE_DEPTH, epochs=DEFAULT_EPOCHS, pretrained=True)


def default(trial: Any) -> dict[str, Any] | None:
    """Everything searchable: optimiser, schedule, warm-up, freezing, batch size, augmentation."""
    return _default_space(trial, bounds=_RESNET50_BOUNDS)


def seed(trial: Any) -> dict[str, Any] | None:
    """Two recipes: Adam with exponential decay 0.65 per epoch, SGD with step decay 0.1 every 3 epochs."""
    return _seed_space(trial, bounds=_RESNET50_BOUNDS)


def quick(trial: Any) -> dict[str, Any] | None:
    """SGD or Adam, lr, horizontal flip, freeze depth 0, 2 or 5; batch size 4."""
    return _quick_space(trial, bounds=_RESNET50_BOUNDS)
