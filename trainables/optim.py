"""The optimiser and the learning-rate schedule of one trial.

``build_scheduler`` returns a scheduler that is stepped ONCE PER ITERATION (after every
``optimizer.step()``), never once per epoch. Epoch-based recipes (step, multistep, exponential)
are expressed per iteration as ``epoch = iteration // iters_per_epoch``, so a linear warm-up over
the first iterations composes with them, and ``state_dict()`` / ``load_state_dict()`` of the
optimiser and the scheduler resume a run mid-epoch at exactly the learning rate it would have had.

Every schedule but one-cycle is a ``LambdaLR`` whose factor is a small picklable object
(:class:`LRFactor`), not a lambda: ``LambdaLR.state_dict()`` saves callable objects (their
``__dict__``) and drops plain functions, and checkpoints and Ray can pickle it.

Settings that could never act are errors, not silent no-ops: in a sweep such a knob wastes trials.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from trainables.config import HParams
from trainables.errors import ConfigError

__all__ = ["LRFactor", "build_optimizer", "build_scheduler", "split_decay_groups"]


def split_decay_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], *, weight_decay: float, decay_norm_and_bias: bool
) -> list[dict]:
    """Param groups for the optimiser; frozen parameters (requires_grad=False) are left out.

    With ``decay_norm_and_bias`` False, every parameter with fewer than two dimensions goes in a
    group with weight_decay 0: biases and the weights of norm layers (BatchNorm, GroupNorm,
    LayerNorm) are exactly the 1-D parameters of a detector, and decaying them only pulls the
    activations' scale and offset towards zero. Empty groups are omitted.
    """
    decay, no_decay = [], []
    for _name, param in named_params:
        if not param.requires_grad:
            continue
        (no_decay if not decay_norm_and_bias and param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "group_name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "group_name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], hparams: HParams
) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW over the trainable parameters, as ``hparams`` says.

    ``named_params`` is ``model.named_parameters()`` or a filtered subset; parameters with
    ``requires_grad=False`` (frozen by ``freeze_depth``) never reach the optimiser.
    """
    groups = split_decay_groups(
        named_params, weight_decay=hparams.weight_decay, decay_norm_and_bias=hparams.decay_norm_and_bias
    )
    if not groups:
        raise ConfigError(
            f"hparams.freeze_depth: no trainable parameters left at freeze_depth {hparams.freeze_depth}"
        )
    if hparams.optimizer == "sgd":
        if hparams.nesterov and hparams.momentum == 0:
            raise ConfigError("hparams.nesterov: Nesterov momentum needs hparams.momentum > 0, got 0")
        return torch.optim.SGD(groups, lr=hparams.lr, momentum=hparams.momentum, nesterov=hparams.nesterov)
    if hparams.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if hparams.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=hparams.lr, betas=(hparams.beta1, hparams.beta2), eps=hparams.eps)
    raise ConfigError(
        f"hparams.optimizer: unknown optimizer {hparams.optimizer!r}; accepted: sgd, adam, adamw"
    )


class LRFactor:
    """The learning-rate multiplier at a given iteration (0-based), for ``LambdaLR``.

    The schedule's factor at ``epoch = iteration // iters_per_epoch`` (cosine: at the iteration
    itself), times a linear warm-up ramp from ``warmup_factor`` at iteration 0 to 1 at
    ``warmup_iters``. A plain object with plain attributes, so ``LambdaLR.state_dict()`` saves it.
    """

    def __init__(
        self,
        *,
        schedule: str,
        iters_per_epoch: int,
        total_iters: int,
        step_size: int = 1,
        gamma: float = 1.0,
        milestones: tuple[int, ...] = (),
        eta_min_factor: float = 0.0,
        warmup_iters: int = 0,
        warmup_factor: float = 1.0,
    ):
        self.schedule = schedule
        self.iters_per_epoch = iters_per_epoch
        self.total_iters = total_iters
        self.step_size = step_size
        self.gamma = gamma
        self.milestones = list(milestones)
        self.eta_min_factor = eta_min_factor
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def __call__(self, iteration: int) -> float:
        epoch = iteration // self.iters_per_epoch
        if self.schedule == "constant":
            factor = 1.0
        elif self.schedule == "step":
            factor = self.gamma ** (epoch // self.step_size)
        elif self.schedule == "multistep":
            factor = self.gamma ** bisect.bisect_right(self.milestones, epoch)
        elif self.schedule == "exponential":
            factor = self.gamma**epoch  # per epoch, multiplicative
        elif self.schedule == "cosine":
            # reaches eta_min_factor at iteration total_iters, i.e. after the run's last step
            progress = min(iteration, self.total_iters) / self.total_iters
            factor = self.eta_min_factor + (1 - self.eta_min_factor) * 0.5 * (
                1 + math.cos(math.pi * progress)
            )
        else:
            raise ValueError(f"LRFactor cannot express schedule {self.schedule!r}")
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def _check_epoch_schedule(hparams: HParams, *, epochs: int) -> None:
    """Reject epoch-based settings that can never change the learning rate within ``epochs``."""
    name = hparams.schedule
    if name in ("step", "multistep", "exponential") and hparams.gamma == 1:
        raise ConfigError(f"hparams.gamma: {name} schedule with gamma 1 never changes the learning rate")
    if name == "step" and hparams.step_size >= epochs:
        raise ConfigError(
            f"hparams.step_size: {hparams.step_size} never acts in a run of {epochs} epochs "
            f"(must be in [1, {epochs - 1}])"
        )
    if name == "multistep":
        ms = hparams.milestones
        if not ms:
            raise ConfigError("hparams.milestones: multistep schedule needs at least one milestone")
        if any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
            raise ConfigError(f"hparams.milestones: must be strictly increasing, got {ms}")
        bad = [m for m in ms if not 1 <= m < epochs]
        if bad:
            raise ConfigError(
                f"hparams.milestones: {bad} never act in a run of {epochs} epochs (must be in [1, {epochs - 1}])"
            )
    if name == "exponential" and epochs < 2:
        raise ConfigError("hparams.schedule: exponential decay per epoch never acts in a run of 1 epoch")


def build_scheduler(
    optimizer: torch.optim.Optimizer, hparams: HParams, *, epochs: int, iters_per_epoch: int
) -> LRScheduler:
    """The learning-rate schedule; call ``scheduler.step()`` once per iteration.

    ``epochs`` and ``iters_per_epoch`` (optimiser steps per epoch, ``len(train_loader)``) fix the
    run's length: cosine anneals over all ``epochs * iters_per_epoch`` iterations and one-cycle
    uses it as ``total_steps``. One-cycle keeps momentum / beta1 at their hyperparameter values
    (``cycle_momentum=False``) so those knobs keep their meaning, and has its own warm-up, so
    ``warmup_iters > 0`` with it is an error.
    """
    if epochs < 1:
        raise ValueError(f"epochs should be >= 1, got {epochs}")
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch should be >= 1, got {iters_per_epoch}")
    total = epochs * iters_per_epoch
    if hparams.schedule == "onecycle":
        if hparams.warmup_iters > 0:
            raise ConfigError(
                f"hparams.warmup_iters: must be 0 with the onecycle schedule (it warms up over "
                f"pct_start), got {hparams.warmup_iters}"
            )
        if hparams.pct_start * total <= 1:  # torch divides by zero at exactly 1
            raise ConfigError(
                f"hparams.pct_start: {hparams.pct_start} of {total} iterations leaves no one-cycle "
                "warm-up (needs pct_start * epochs * iters_per_epoch > 1)"
            )
        return OneCycleLR(
            optimizer,
            max_lr=hparams.lr,
            total_steps=total,
            pct_start=hparams.pct_start,
            div_factor=hparams.div_factor,
            final_div_factor=hparams.final_div_factor,
            cycle_momentum=False,
        )
    _check_epoch_schedule(hparams, epochs=epochs)
    factor = LRFactor(
        schedule=hparams.schedule,
        iters_per_epoch=iters_per_epoch,
        total_iters=total,
        step_size=hparams.step_size,
        gamma=hparams.gamma,
        milestones=tuple(hparams.milestones),
        eta_min_factor=hparams.eta_min_factor,
        warmup_iters=hparams.warmup_iters,
        warmup_factor=hparams.warmup_factor,
    )
    return LambdaLR(optimizer, lr_lambda=factor)
