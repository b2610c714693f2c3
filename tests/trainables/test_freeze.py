"""Freeze depth: exact trainable counts per depth and architecture, frozen BN stays frozen, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from trainables.architectures import ARCHITECTURES, FAMILIES
from trainables.config import ModelConfig
from trainables.errors import ConfigError
from trainables.freeze import (
    STAGES,
    apply_freeze,
    freeze_batchnorm,
    max_freeze_depth,
    trainable_parameters,
    validate_freeze_depth,
)
from trainables.model import build_inference_model, build_model

CLASSES = ["a", "b", "c"]  # K = 3
# the one-stage families have their own counts in test_onestage_heads.py
FASTER_RCNN = [arch for arch in ARCHITECTURES if FAMILIES[arch] == "fasterrcnn"]
SIZES = {"min_size": 64, "max_size": 96}
# K = 3 box predictor on the 1024-d box head: cls_score 1024*4+4, bbox_pred 1024*16+16
PREDICTOR_NUMEL = (1024 * 4 + 4) + (1024 * 16 + 16)

# Trainable parameter elements at depth 0..8, K = 3. "random": weights=None (BatchNorm2d
# everywhere, each BN's weight and bias count until its stage freezes); "pretrained": the
# structure torchvision builds for weights (FrozenBatchNorm2d in the backbone body, none in v2).
_RESNET_RANDOM = [41362531, 41352995, 41137187, 39917603, 32819235, 17854499, 14510115, 13916180, 20500]
_RESNET_PRETRAINED = [41309411, 41300003, 41087011, 39874595, 32796707, 17854499, 14510115, 13916180, 20500]
_V2 = [43266403, 43256867, 43041059, 41821475, 34723107, 19758371, 16411939, 15227924, 20500]
_MOBILENET_RANDOM = [18964879, 18963951, 18956071, 18903759, 18172391, 15992927, 14525535, 13916180, 20500]
_MOBILENET_PRETRAINED = [
    18940479,
    18939647,
    18932407,
    18881583,
    18159143,
    15992927,
    14525535,
    13916180,
    20500,
]
EXPECTED_TRAINABLE = {
    ("fasterrcnn_resnet50_fpn", "random"): _RESNET_RANDOM,
    ("fasterrcnn_resnet50_fpn", "pretrained"): _RESNET_PRETRAINED,
    ("fasterrcnn_resnet50_fpn_v2", "random"): _V2,
    ("fasterrcnn_resnet50_fpn_v2", "pretrained"): _V2,  # torchvision's v2 never uses FrozenBatchNorm2d
    ("fasterrcnn_mobilenet_v3_large_fpn", "random"): _MOBILENET_RANDOM,
    ("fasterrcnn_mobilenet_v3_large_fpn", "pretrained"): _MOBILENET_PRETRAINED,
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "random"): _MOBILENET_RANDOM,
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "pretrained"): _MOBILENET_PRETRAINED,
}
CASES = [
    (arch, kind, depth) for arch in FASTER_RCNN for kind in ("random", "pretrained") for depth in range(9)
]


@pytest.fixture(scope="module")
def models():
    """One model per (architecture, structure), built once; tests deep-copy them."""
    built = {}
    for arch in FASTER_RCNN:
        built[arch, "random"] = build_model(ModelConfig(architecture=arch, **SIZES), CLASSES)
        built[arch, "pretrained"] = build_inference_model(arch, len(CLASSES), SIZES, pretrained=True)
    return built


def _numel(module: nn.Module, *, batchnorm: bool | None = None) -> int:
    """Parameter elements of ``module``; only those of BatchNorm2d layers (True) or of others (False)."""
    total = 0
    for m in module.modules():
        if batchnorm is None or isinstance(m, nn.BatchNorm2d) == batchnorm:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


def test_every_architecture_has_eight_stages_ending_before_the_predictor():
    for arch in ARCHITECTURES:
        assert max_freeze_depth(arch) == 8
        last = ["fpn", "rpn", "box_head"] if arch in FASTER_RCNN else ["box_tower", "class_tower"]
        assert [name for name, _ in STAGES[arch]][-len(last):] == last


@pytest.mark.parametrize("arch,kind,depth", CASES)
def test_trainable_counts_per_depth(models, arch, kind, depth):
    base = models[arch, kind]
    model = copy.deepcopy(base)
    report = apply_freeze(model, architecture=arch, depth=depth)
    expected = EXPECTED_TRAINABLE[arch, kind][depth]
    assert report.trainable_params == expected
    assert sum(p.numel() for _, p in trainable_parameters(model)) == expected
    # the same numbers, derived from the stage table on the unfrozen model
    stage_modules = [base.get_submodule(path) for _, paths in STAGES[arch][:depth] for path in paths]
    assert expected == _numel(base) - sum(_numel(m) for m in stage_modules)
    # BatchNorm2d weights become FrozenBatchNorm2d buffers: frozen, but no longer parameters
    assert report.frozen_params == sum(_numel(m, batchnorm=False) for m in stage_modules)
    assert report.frozen_batchnorms == sum(
        isinstance(x, nn.BatchNorm2d) for m in stage_modules for x in m.modules()
    )
    assert report.frozen_stages == tuple(name for name, _ in STAGES[arch][:depth])
    for _, paths in STAGES[arch][:depth]:
        for path in paths:
            frozen = model.get_submodule(path)
            assert not any(p.requires_grad for p in frozen.parameters())
            assert not any(isinstance(x, nn.BatchNorm2d) for x in frozen.modules())


@pytest.mark.parametrize("arch", FASTER_RCNN)
def test_max_depth_trains_only_the_box_predictor(models, arch):
    model = copy.deepcopy(models[arch, "random"])
    apply_freeze(model, architecture=arch, depth=max_freeze_depth(arch))
    names = [name for name, _ in trainable_parameters(model)]
    assert names == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ]
    assert sum(p.numel() for _, p in trainable_parameters(model)) == PREDICTOR_NUMEL
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_frozen_parameters_are_not_returned(models):
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    model = copy.deepcopy(models[arch, "random"])
    apply_freeze(model, architecture=arch, depth=3)
    names = {name for name, _ in trainable_parameters(model)}
    assert not any(name.startswith(("backbone.body.0.", "backbone.body.6.")) for name in names)
    assert "backbone.body.7.block.0.0.weight" in names  # first block of the stride-16 stage
    assert all(p.requires_grad for _, p in trainable_parameters(model))


def test_frozen_batchnorm_stats_do_not_move_in_training(models):
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    model = copy.deepcopy(models[arch, "random"])
    apply_freeze(model, architecture=arch, depth=2)
    frozen_bn = model.backbone.body.get_submodule("2.block.0.1")  # stride-4 stage: frozen
    live_bn = model.backbone.body.get_submodule("4.block.0.1")  # stride-8 stage: trains
    assert isinstance(frozen_bn, FrozenBatchNorm2d) and isinstance(live_bn, nn.BatchNorm2d)
    before_frozen, before_live = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    model.train()
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not torch.equal(live_bn.running_mean, before_live)
    assert all(p.grad is None for p in model.backbone.body.get_submodule("2").parameters())


def test_freeze_batchnorm_keeps_eval_output():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4, eps=1e-3)
    bn.train()
    bn(torch.randn(8, 4, 5, 5) * 3 + 1)  # move the running stats away from 0 / 1
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    holder = nn.Sequential(bn).eval()
    x = torch.randn(2, 4, 5, 5)
    expected = holder(x)
    assert freeze_batchnorm(holder) == 1
    assert isinstance(holder[0], FrozenBatchNorm2d) and holder[0].eps == 1e-3
    torch.testing.assert_close(holder(x), expected)


@pytest.mark.parametrize("depth", [-1, 9, 1.5])
def test_out_of_range_depth(depth):
    with pytest.raises(ConfigError, match=r"hparams\.freeze_depth should be in the range \[0,8\]"):
        validate_freeze_depth("fasterrcnn_resnet50_fpn", depth)


def test_depth_that_changes_nothing_is_an_error(models):
    arch = "fasterrcnn_resnet50_fpn"
    model = copy.deepcopy(models[arch, "random"])
    apply_freeze(model, architecture=arch, depth=2)  # stem and layer1 frozen already
    with pytest.raises(ConfigError, match=r"freeze_depth=2 does nothing.*layer1"):
        apply_freeze(model, architecture=arch, depth=2)
    report = apply_freeze(model, architecture=arch, depth=3)  # layer2 still trains: fine
    assert report.trainable_params == _RESNET_RANDOM[3]


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="unknown architecture 'retinanet'"):
        max_freeze_depth("retinanet")
