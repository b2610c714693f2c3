"""Optimiser and learning-rate schedule: values per epoch and iteration, groups, resume."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from torch import nn

from trainables.config import HParams
from trainables.errors import ConfigError
from trainables.optim import build_optimizer, build_scheduler


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))


def _lrs(hp: HParams, *, epochs: int, iters_per_epoch: int, iters: int | None = None) -> list[float]:
    """The lr each iteration trains with, stepping the scheduler once per iteration."""
    model = nn.Linear(2, 1)
    opt = build_optimizer(model.named_parameters(), hp)
    sched = build_scheduler(opt, hp, epochs=epochs, iters_per_epoch=iters_per_epoch)
    out = []
    for _ in range(epochs * iters_per_epoch if iters is None else iters):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "hparams, per_epoch",
    [
        (dict(schedule="constant"), [0.005] * 6),
        (dict(schedule="step", step_size=3, gamma=0.1), [0.005] * 3 + [0.0005] * 3),
        (
            dict(schedule="multistep", milestones=[2, 4], gamma=0.5),
            [0.005, 0.005, 0.0025, 0.0025, 0.00125, 0.00125],
        ),
        (dict(schedule="exponential", gamma=0.65), [0.005 * 0.65**e for e in range(6)]),
    ],
    ids=["constant", "step", "multistep", "exponential"],
)
def test_epoch_schedules_hold_one_lr_per_epoch(hparams, per_epoch):
    lrs = _lrs(HParams(lr=0.005, **hparams), epochs=6, iters_per_epoch=3)
    assert lrs == pytest.approx([lr for lr in per_epoch for _ in range(3)], rel=1e-12)


def test_cosine_anneals_per_iteration_to_eta_min():
    lrs = _lrs(HParams(lr=0.01, schedule="cosine", eta_min_factor=0.1), epochs=2, iters_per_epoch=2)
    # 0.01 * (0.1 + 0.9 * (1 + cos(pi * i / 4)) / 2) for i = 0..3
    assert lrs == pytest.approx([0.01, 0.00868198, 0.0055, 0.00231802], rel=1e-6)


@pytest.mark.parametrize(
    "hparams, factors",
    [
        (dict(schedule="constant"), [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]),
        # step halves every epoch (3 iterations); the ramp multiplies it
        (dict(schedule="step", step_size=1, gamma=0.5), [0.2, 0.4, 0.6, 0.4, 0.5, 0.5, 0.25]),
    ],
    ids=["constant", "step"],
)
def test_linear_warmup_ramps_from_warmup_factor(hparams, factors):
    hp = HParams(lr=0.01, warmup_iters=4, warmup_factor=0.2, **hparams)
    lrs = _lrs(hp, epochs=3, iters_per_epoch=3, iters=7)
    assert lrs == pytest.approx([0.01 * f for f in factors], rel=1e-12)


def test_onecycle_peaks_at_pct_start_and_keeps_momentum():
    hp = HParams(lr=0.02, schedule="onecycle", pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    lrs = _lrs(hp, epochs=5, iters_per_epoch=10)
    assert lrs[0] == pytest.approx(0.02 / 25)
    assert max(range(50), key=lrs.__getitem__) == 14  # pct_start * 50 - 1
    assert lrs[14] == pytest.approx(0.02)
    assert lrs[-1] == pytest.approx(0.02 / 25 / 1e4)
    model = nn.Linear(2, 1)
    opt = build_optimizer(model.named_parameters(), hp)
    sched = build_scheduler(opt, hp, epochs=5, iters_per_epoch=10)
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["momentum"] == 0.9  # not cycled


@pytest.mark.parametrize(
    "hparams, epochs, key",
    [
        (dict(schedule="onecycle", warmup_iters=10), 5, "hparams.warmup_iters"),
        (dict(schedule="onecycle", pct_start=0.1), 2, "hparams.pct_start"),  # 0.8 of 8 iterations
        (dict(schedule="step", step_size=5), 5, "hparams.step_size"),
        (dict(schedule="multistep", milestones=[3, 12]), 10, "hparams.milestones"),
        (dict(schedule="multistep", milestones=[3, 3]), 10, "hparams.milestones"),
        (dict(schedule="step", gamma=1.0), 10, "hparams.gamma"),
        (dict(schedule="exponential", gamma=0.65), 1, "hparams.schedule"),
        (dict(optimizer="sgd", momentum=0.0, nesterov=True), 5, "hparams.nesterov"),
    ],
)
def test_settings_that_cannot_act_are_config_errors(hparams, epochs, key):
    hp = HParams(**hparams)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        opt = build_optimizer(nn.Linear(2, 1).named_parameters(), hp)
        build_scheduler(opt, hp, epochs=epochs, iters_per_epoch=4)


@pytest.mark.parametrize(
    "hparams, cls, expected",
    [
        (
            dict(optimizer="sgd", momentum=0.8, nesterov=True),
            torch.optim.SGD,
            dict(momentum=0.8, nesterov=True),
        ),
        (
            dict(optimizer="adam", beta1=0.85, beta2=0.99, eps=1e-6),
            torch.optim.Adam,
            dict(betas=(0.85, 0.99), eps=1e-6),
        ),
        (
            dict(optimizer="adamw", beta1=0.9, beta2=0.95),
            torch.optim.AdamW,
            dict(betas=(0.9, 0.95), eps=1e-8),
        ),
    ],
)
def test_optimizer_kind_and_settings(hparams, cls, expected):
    opt = build_optimizer(_tiny_model().named_parameters(), HParams(lr=0.003, weight_decay=1e-3, **hparams))
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.003 and group["weight_decay"] == 1e-3
    assert {k: group[k] for k in expected} == expected


@pytest.mark.parametrize("decay_norm_and_bias, sizes", [(True, [(6, 1e-3)]), (False, [(2, 1e-3), (4, 0.0)])])
def test_weight_decay_groups(decay_norm_and_bias, sizes):
    # conv.weight, linear.weight decay; conv.bias, bn.weight, bn.bias, linear.bias are 1-D
    hp = HParams(weight_decay=1e-3, decay_norm_and_bias=decay_norm_and_bias)
    opt = build_optimizer(_tiny_model().named_parameters(), hp)
    assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == sizes


def test_frozen_parameters_are_left_out():
    model = _tiny_model()
    for p in model[0].parameters():  # freeze the conv
        p.requires_grad_(False)
    opt = build_optimizer(model.named_parameters(), HParams())
    given = {id(p) for g in opt.param_groups for p in g["params"]}
    assert given == {id(p) for p in model[1:].parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="freeze_depth"):
        build_optimizer(model.named_parameters(), HParams())


def _train_steps(model, opt, sched, n):
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        model.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(
    "hparams",
    [
        dict(schedule="step", step_size=2, gamma=0.5, warmup_iters=5),
        dict(schedule="cosine", eta_min_factor=0.05),
        dict(schedule="exponential", gamma=0.65, optimizer="adam"),
        dict(schedule="onecycle", pct_start=0.25),
    ],
    ids=["step+warmup", "cosine", "exponential", "onecycle"],
)
def test_state_dict_resume_continues_exactly(hparams):
    hp = HParams(lr=0.01, **hparams)
    epochs, ipe = 5, 4

    def fresh():
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        opt = build_optimizer(model.named_parameters(), hp)
        return model, opt, build_scheduler(opt, hp, epochs=epochs, iters_per_epoch=ipe)

    straight = _train_steps(*fresh(), epochs * ipe)

    model, opt, sched = fresh()
    first = _train_steps(model, opt, sched, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain data only: the factor saved as its __dict__
    model, opt, sched = fresh()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    resumed = first + _train_steps(model, opt, sched, epochs * ipe - 7)
    assert resumed == straight
    assert not math.isclose(straight[0], straight[-1])  # the schedule did move


def test_scheduler_pickles():
    hp = HParams(schedule="cosine", warmup_iters=3)
    sched = build_scheduler(
        build_optimizer(nn.Linear(2, 1).named_parameters(), hp), hp, epochs=2, iters_per_epoch=3
    )
    factor = pickle.loads(pickle.dumps(sched.lr_lambdas[0]))
    assert [factor(i) for i in range(6)] == [sched.lr_lambdas[0](i) for i in range(6)]
