"""RetinaNet, FCOS and SSDlite: class heads pruned from a 91-class checkpoint, freeze depths, losses.

Each architecture's stand-in for COCO weights is a random 91-class model saved as a ``.pth``
state_dict; boxtune's model is built from that file, as from a torchvision weights file.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torchvision.models import get_model

from trainables.architectures import FAMILIES
from trainables.config import ModelConfig, parse_trial_config
from trainables.errors import ConfigError, TrainingError
from trainables.freeze import STAGES, apply_freeze, trainable_parameters
from trainables.heads import coco_label
from trainables.loop import LOSS_NAMES
from trainables.model import build_inference_model, build_model, check_head, model_kwargs
from trainables.onestage_heads import CLOSED_LOGIT, class_convs

ONESTAGE = ["retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"]
CLASSES = ["a", "b", "c"]  # K = 3; "b" starts fresh
CLASS_MAP = {"a": "bear", "c": "person"}
ROWS = [0, coco_label("bear"), None, coco_label("person")]  # source class of each new index
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # torchvision's RetinaNet/FCOS prior, p = 0.01

# Trainable parameter elements at depth 0..8 of the model built from the file (K = 3; the
# structure torchvision's pretrained builders have: FrozenBatchNorm2d in the ResNet-50 body of
# RetinaNet v1 and FCOS, BatchNorm2d in RetinaNet v2 and SSDlite). At depth 8 only the final convs
# train: RetinaNet cls_logits 256*9*(9*4) + 36 and bbox_reg 256*9*(9*4) + 36 = 165960; FCOS
# cls_logits 256*9*4 + 4, bbox_reg 256*9*4 + 4, bbox_ctrness 256*9 + 1 = 20745; SSDlite six 1x1
# class convs (672+480+512+256+256+128)*(6*4) + 6*24 and as many box convs = 110880.
EXPECTED_TRAINABLE = {
    "retinanet_resnet50_fpn": [32210184, 32200776, 31987784, 30775368, 23697480, 8755272, 4886600, 2526280, 165960],
    "retinanet_resnet50_fpn_v2": [36394120, 36384584, 36168776, 34949192, 27850824, 12886088, 4888648, 2527304,
                                  165960],
    "fcos_resnet50_fpn": [32069065, 32059657, 31846665, 30634249, 23556361, 8614153, 4745481, 2383113, 20745],
    "ssdlite320_mobilenet_v3_large": [2234240, 2233312, 2225432, 2173120, 1441752, 613728, 161568, 136224, 110880],
}
FINAL_LAYERS = {
    "retinanet": ["head.classification_head.cls_logits", "head.regression_head.bbox_reg"],
    "fcos": ["head.classification_head.cls_logits", "head.regression_head.bbox_reg", "head.regression_head.bbox_ctrness"],
    "ssd": [f"head.classification_head.module_list.{i}.1" for i in range(6)]
    + [f"head.regression_head.module_list.{i}.1" for i in range(6)],
}


def _sizes(arch: str) -> dict[str, int]:
    return {} if FAMILIES[arch] == "ssd" else {"min_size": 96, "max_size": 96}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """arch -> (91-class model, its .pth file): random weights standing in for COCO's."""
    root = tmp_path_factory.mktemp("coco91")
    built = {}
    for i, arch in enumerate(ONESTAGE):
        torch.manual_seed(i)
        model = get_model(arch, weights=None, weights_backbone=None, num_classes=91, **_sizes(arch))
        path = root / f"{arch}.pth"
        torch.save(model.state_dict(), path)
        built[arch] = (model.eval(), path)
    return built


@pytest.fixture(scope="module")
def pruned(sources):
    """arch -> boxtune's K = 3 model built from the source file."""
    built = {}
    for arch in ONESTAGE:
        torch.manual_seed(100)
        cfg = ModelConfig(architecture=arch, weights=str(sources[arch][1]), class_map=CLASS_MAP, **_sizes(arch))
        built[arch] = build_model(cfg, CLASSES)
    return built


@pytest.mark.parametrize("arch", ONESTAGE)
def test_copied_fresh_and_reserved_channels_per_anchor(sources, pruned, arch):
    family = FAMILIES[arch]
    source_convs, new_convs = class_convs(sources[arch][0], family), class_convs(pruned[arch], family)
    assert len(new_convs) == (6 if family == "ssd" else 1)
    k1 = len(CLASSES) + 1
    for old, new in zip(source_convs, new_convs, strict=True):
        anchors = old.out_channels // 91
        assert anchors == {"retinanet": 9, "fcos": 1, "ssd": 6}[family]
        assert new.out_channels == anchors * k1  # anchor-major: channel a * (K + 1) + c
        for a in range(anchors):
            for c, src in enumerate(ROWS):
                weight, bias = new.weight[a * k1 + c], new.bias[a * k1 + c]
                if c == 0 and family != "ssd":  # the sigmoid head's reserved index: closed
                    assert not weight.any() and bias.item() == CLOSED_LOGIT
                elif src is None:  # fresh, as torchvision initialises the conv
                    assert not any(torch.equal(weight, w) for w in old.weight)
                    assert bias.item() == pytest.approx(PRIOR_BIAS if family != "ssd" else 0.0, abs=1e-6)
                    assert weight.std().item() == pytest.approx(0.03 if family == "ssd" else 0.01, rel=0.2)
                else:  # SSDlite's background (c = 0) is copied too
                    assert torch.equal(weight, old.weight[a * 91 + src])
                    assert torch.equal(bias, old.bias[a * 91 + src])
    head = pruned[arch].head.classification_head
    assert (head.num_columns if family == "ssd" else head.num_classes) == k1


@pytest.mark.parametrize("arch", ONESTAGE)
def test_pruned_head_scores_mapped_classes_like_the_coco_head(sources, pruned, arch):
    """The same features give the mapped classes the source's logits, and the whole box regression."""
    source, model = sources[arch][0], pruned[arch].eval()
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = list(source.backbone(images).values())
        want, got = source.head(features), model.head(features)
    assert torch.equal(got["bbox_regression"], want["bbox_regression"])
    assert got["cls_logits"].shape[:2] == want["cls_logits"].shape[:2] and got["cls_logits"].shape[2] == 4
    for new, src in enumerate(ROWS):
        if new == 0 and FAMILIES[arch] != "ssd":
            assert (got["cls_logits"][..., 0] == CLOSED_LOGIT).all()  # sigmoid ~4e-44: never scored
        elif src is not None:
            torch.testing.assert_close(got["cls_logits"][..., new], want["cls_logits"][..., src], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ONESTAGE)
@pytest.mark.parametrize("depth", range(9))
def test_trainable_counts_per_depth(pruned, arch, depth):
    model = copy.deepcopy(pruned[arch])
    report = apply_freeze(model, architecture=arch, depth=depth)
    assert report.trainable_params == EXPECTED_TRAINABLE[arch][depth]
    assert report.frozen_stages == tuple(name for name, _ in STAGES[arch][:depth])
    if depth == 8:  # only the final class and box convs train, whatever the family
        names = [name for name, _ in trainable_parameters(model)]
        family = FAMILIES[arch]
        assert sorted(names) == sorted(f"{layer}.{p}" for layer in FINAL_LAYERS[family] for p in ("weight", "bias"))


@pytest.mark.parametrize("arch", ONESTAGE)
def test_training_step_returns_the_family_losses(pruned, arch):
    model = copy.deepcopy(pruned[arch]).train()
    apply_freeze(model, architecture=arch, depth=5)  # backbone frozen: a cheaper backward
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 96, generator=g), torch.rand(3, 80, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 20.0, 50.0, 70.0]]), "labels": torch.tensor([3])}]
    losses = model(images, targets)
    assert sorted(losses) == sorted(LOSS_NAMES[FAMILIES[arch]])
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    convs = class_convs(model, FAMILIES[arch])  # the pruned convs learn
    assert all(conv.weight.grad is not None and conv.bias.grad is not None for conv in convs)
    assert convs[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_sigmoid_head_never_emits_label_zero(pruned, arch):
    model = copy.deepcopy(pruned[arch]).eval()
    conv = model.head.classification_head.cls_logits
    with torch.no_grad():  # make every open channel fire everywhere
        for c in range(conv.out_channels):
            if c % (len(CLASSES) + 1):
                conv.bias[c] = 8.0
    with torch.no_grad():
        out = model([torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(2))])[0]
    assert len(out["labels"]) > 0 and set(out["labels"].tolist()) <= {1, 2, 3}


@pytest.mark.parametrize("arch", ONESTAGE)
def test_half_pruned_head_fails_the_check(pruned, arch):
    model = copy.deepcopy(pruned[arch])
    check_head(model, arch, len(CLASSES))
    head = model.head.classification_head
    if FAMILIES[arch] == "ssd":  # one map's conv cut to 2 classes, num_columns left at 4
        head.module_list[3][1] = torch.nn.Conv2d(256, 6 * 3, 1)
        match = r"class conv 3 has 18 channels for 6 anchors"
    else:  # a new conv, the head's num_classes left at 4: view() would mix anchors and classes
        anchors = head.num_anchors
        head.cls_logits = torch.nn.Conv2d(256, anchors * 3, 3, padding=1)
        match = rf"class conv 0 has {anchors * 3} channels for {anchors} anchors"
    with pytest.raises(TrainingError, match=match):
        check_head(model, arch, len(CLASSES))
    with pytest.raises(TrainingError, match=r"head num_(classes|columns) is 4"):
        check_head(pruned[arch], arch, 2)


@pytest.mark.parametrize("arch", ONESTAGE)
def test_inference_model_loads_the_trained_state_dict(pruned, arch):
    cfg = ModelConfig(architecture=arch, **_sizes(arch))
    model = build_inference_model(arch, len(CLASSES), model_kwargs(cfg), pretrained=True)
    model.load_state_dict(pruned[arch].state_dict())  # strict
    assert model_kwargs(cfg) == _sizes(arch)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"architecture": "ssdlite320_mobilenet_v3_large", "min_size": 96},
         "min_size does not apply to ssdlite320_mobilenet_v3_large (SSDlite resizes every image to 320x320"),
        ({"architecture": "retinanet_resnet50_fpn", "box_batch_size_per_image": 128},
         "box_batch_size_per_image does not apply to retinanet_resnet50_fpn (retinanet keys: min_size, max_size)"),
        ({"architecture": "fcos_resnet50_fpn", "by_architecture": {"fcos_resnet50_fpn": {"box_batch_size_per_image": 64}}},
         "by_architecture.fcos_resnet50_fpn: box_batch_size_per_image does not apply"),
        ({"by_architecture": {"ssdlite320": {}}}, "by_architecture.ssdlite320: unknown architecture"),
        ({"by_architecture": {"fcos_resnet50_fpn": {"class_map": {}}}},
         "by_architecture.fcos_resnet50_fpn: class_map cannot be set per architecture"),
    ],
)
def test_model_keys_that_do_nothing_for_the_family_are_errors(model, message):
    with pytest.raises(ConfigError) as err:
        parse_trial_config({"model": model})
    assert message in str(err.value)


def test_by_architecture_settings_apply_to_their_architecture():
    model = {"architecture": "ssdlite320_mobilenet_v3_large", "weights": "ssd.pth",
             "by_architecture": {"fasterrcnn_mobilenet_v3_large_fpn": {"min_size": 128, "max_size": 160,
                                                                       "weights": "frcnn.pth"}}}
    ssd = parse_trial_config({"model": model}).model
    assert (ssd.weights, ssd.by_architecture, model_kwargs(ssd)) == ("ssd.pth", {}, {})
    frcnn = parse_trial_config({"model": {**model, "architecture": "fasterrcnn_mobilenet_v3_large_fpn"}}).model
    assert (frcnn.weights, model_kwargs(frcnn)) == ("frcnn.pth", {"min_size": 128, "max_size": 160})
    # a full dump (as sweep.yaml and checkpoints record it) validates again: defaults are not "set"
    assert parse_trial_config({"model": ssd.model_dump(mode="json")}).model == ssd


def test_fcos_trial_trains_evaluates_and_logs_its_own_losses(tmp_path, tiny_manifest):
    """One epoch of the real trial loop: the family's loss parts reach metrics, the epoch line and TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainables.loop import TrialResources, run_trial
    from trainables.reporting import LocalReporter, format_epoch_line

    cfg = {"model": {"architecture": "fcos_resnet50_fpn", "weights": None, "min_size": 96, "max_size": 96},
           "training": {"epochs": 1, "seed": 0}, "hparams": {"freeze_depth": 5, "batch_size": 6, "lr": 0.002}}
    reporter = LocalReporter(tmp_path / "out")
    metrics = run_trial(cfg, manifest=tiny_manifest, reporter=reporter, resources=TrialResources(cpus=1, device="cpu"))
    parts = ["loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"]
    assert all(math.isfinite(metrics[k]) and metrics[k] > 0 for k in parts)
    assert metrics["loss"] == pytest.approx(sum(metrics[k] for k in parts))
    assert "loss_classifier" not in metrics and 0.0 <= metrics["AP"] <= 1.0
    line = format_epoch_line(metrics)
    assert f"(cls {metrics['loss_classification']:.4f} box {metrics['loss_bbox_regression']:.4f} " \
           f"ctr {metrics['loss_bbox_ctrness']:.4f})" in line
    events = EventAccumulator(str(tmp_path / "out"))
    events.Reload()
    for key in ("loss", *parts):
        assert [s.value for s in events.Scalars(f"loss/{key}")] == pytest.approx([metrics[key]])


@pytest.mark.parametrize("arch", ONESTAGE)
def test_weights_names_resolve_to_91_class_coco_weights(arch):
    from trainables.model import _resolve_weights

    enum = _resolve_weights(arch, "DEFAULT")  # no download: the enum member only
    assert enum.name == "COCO_V1" and len(enum.meta["categories"]) == 91


def test_ssdlite_needs_two_images_per_batch():
    with pytest.raises(ConfigError, match=r"hparams\.batch_size 1 cannot train ssdlite320_mobilenet_v3_large"):
        parse_trial_config({"model": {"architecture": "ssdlite320_mobilenet_v3_large"}, "hparams": {"batch_size": 1}})
    parse_trial_config({"model": {"architecture": "ssdlite320_mobilenet_v3_large"},
                        "hparams": {"batch_size": 1, "freeze_depth": 8}})  # every BatchNorm2d frozen: fine


def test_ssdlite_trial_leaves_out_a_last_batch_of_one(tmp_path, tiny_manifest):
    from trainables.data import read_manifest
    from trainables.loop import TrialResources, run_trial
    from trainables.reporting import LocalReporter

    n_train = len(read_manifest(tiny_manifest).records("train"))
    cfg = {"model": {"architecture": "ssdlite320_mobilenet_v3_large", "weights": None},
           "training": {"epochs": 1, "seed": 0}, "hparams": {"freeze_depth": 5, "batch_size": n_train - 1}}
    metrics = run_trial(cfg, manifest=tiny_manifest, reporter=LocalReporter(tmp_path / "out"),
                        resources=TrialResources(cpus=1, device="cpu"))
    # one step of n_train - 1 images; the image left over would have failed SSDlite's 1x1 BatchNorm
    assert metrics["images_per_s"] * metrics["train_s"] == pytest.approx(n_train - 1, rel=1e-6)
    assert metrics["loss"] == pytest.approx(metrics["loss_bbox_regression"] + metrics["loss_classification"])
    assert 0.0 <= metrics["AP"] <= 1.0
