"""Building the detector from a local 91-class checkpoint, pruning its head, and the errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import get_model
from torchvision.ops.misc import FrozenBatchNorm2d

from trainables.config import ModelConfig
from trainables.errors import ConfigError
from trainables.freeze import apply_freeze
from trainables.heads import coco_label
from trainables.model import _resolve_weights, build_inference_model, build_model, model_kwargs

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZES = {"min_size": 64, "max_size": 96}


@pytest.fixture(scope="module")
def source():
    """A random 91-class model saved as a raw state_dict: the stand-in for COCO weights."""
    torch.manual_seed(0)
    model = get_model(ARCH, weights=None, weights_backbone=None, num_classes=91, **SIZES)
    return model.state_dict()


@pytest.fixture(scope="module")
def checkpoint(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "coco91.pth"
    torch.save(source, path)
    return path


def _cfg(weights, class_map=None, arch=ARCH) -> ModelConfig:
    return ModelConfig(
        architecture=arch,
        weights=None if weights is None else str(weights),
        class_map=class_map or {},
        **SIZES,
    )


@pytest.mark.parametrize(
    "classes,class_map",
    [(["raccoon"], {"raccoon": "bear"}), (["a", "b", "c"], {"a": "cell phone", "b": None, "c": "person"})],
)
def test_pruned_rows_equal_checkpoint_rows(source, checkpoint, classes, class_map):
    torch.manual_seed(1)
    model = build_model(_cfg(checkpoint, class_map), classes)
    head = model.roi_heads.box_predictor
    k = len(classes)
    assert head.cls_score.weight.shape == (k + 1, 1024) and head.bbox_pred.weight.shape == (4 * (k + 1), 1024)
    src_w, src_b = (
        source["roi_heads.box_predictor.cls_score.weight"],
        source["roi_heads.box_predictor.cls_score.bias"],
    )
    box_w, box_b = (
        source["roi_heads.box_predictor.bbox_pred.weight"],
        source["roi_heads.box_predictor.bbox_pred.bias"],
    )
    rows = [0] + [None if class_map.get(c) is None else coco_label(class_map[c]) for c in classes]
    for new, src in enumerate(rows):
        if src is None:  # fresh: differs from every source row
            assert not any(torch.equal(head.cls_score.weight[new], w) for w in src_w)
            assert not torch.equal(head.bbox_pred.weight[4 * new : 4 * new + 4], box_w[4 * new : 4 * new + 4])
            continue
        assert torch.equal(head.cls_score.weight[new], src_w[src])
        assert torch.equal(head.cls_score.bias[new], src_b[src])
        assert torch.equal(head.bbox_pred.weight[4 * new : 4 * new + 4], box_w[4 * src : 4 * src + 4])
        assert torch.equal(head.bbox_pred.bias[4 * new : 4 * new + 4], box_b[4 * src : 4 * src + 4])


def test_checkpoint_loads_into_pretrained_structure(source, checkpoint):
    model = build_model(_cfg(checkpoint, {"a": "dog"}), ["a"])
    state = model.state_dict()
    body = [k for k in source if k.startswith(("backbone.", "rpn.", "roi_heads.box_head."))]
    body = [k for k in body if not k.endswith("num_batches_tracked")]  # FrozenBatchNorm2d drops it
    assert all(torch.equal(state[k], source[k]) for k in body)
    # torchvision's pretrained MobileNetV3 backbone: FrozenBatchNorm2d (eps 1e-5) in the body only
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 46 and {m.eps for m in frozen} == {1e-5}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # freezing is apply_freeze's job


def test_random_init_keeps_batchnorm():
    model = build_model(_cfg(None), ["a", "b"])
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert model.roi_heads.box_predictor.cls_score.out_features == 3


def test_checkpoint_under_model_key_with_metadata(source, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"model": source, "epoch": 3, "note": "coco"}, path)
    model = build_model(_cfg(path, {"a": "bear"}), ["a"])
    assert torch.equal(
        model.roi_heads.box_predictor.cls_score.weight[1],
        source["roi_heads.box_predictor.cls_score.weight"][23],
    )


def test_pruned_model_pairs_each_score_with_its_own_box(source, tmp_path):
    """Cell phone dominates; the pruned model's boxes are cell phone's regression, as in the 91-class model."""
    state = dict(source)
    cls_w, cls_b = (state[f"roi_heads.box_predictor.cls_score.{p}"].clone() for p in ("weight", "bias"))
    box_w, box_b = (state[f"roi_heads.box_predictor.bbox_pred.{p}"].clone() for p in ("weight", "bias"))
    phone = coco_label("cell phone")
    cls_w[phone], cls_b[phone] = 0.0, 50.0  # score 1.0 (in float32) on every proposal
    box_w[4 * phone : 4 * phone + 4] = 0.0
    box_b[4 * phone : 4 * phone + 4] = torch.tensor([0.25, -0.125, 0.5, -0.25])  # dx, dy, dw, dh
    state.update(
        {
            "roi_heads.box_predictor.cls_score.weight": cls_w,
            "roi_heads.box_predictor.cls_score.bias": cls_b,
            "roi_heads.box_predictor.bbox_pred.weight": box_w,
            "roi_heads.box_predictor.bbox_pred.bias": box_b,
        }
    )
    path = tmp_path / "phone.pth"
    torch.save(state, path)

    # "a" is label 2 here, so a head pruned wrongly (scores or boxes by position) shows up
    classes = ["b", "a", "c"]
    pruned = build_model(_cfg(path, {"a": "cell phone", "b": "bear"}), classes).eval()
    full = get_model(ARCH, weights=None, weights_backbone=None, num_classes=91, **SIZES)
    full.load_state_dict(state)
    full.eval()
    for model in (pruned, full):
        # keep every scored box: no NMS decision or top-k cut whose ties could break either way
        model.roi_heads.nms_thresh, model.roi_heads.detections_per_img = 1.0, 100_000
    torch.manual_seed(2)
    images = [torch.rand(3, 64, 80), torch.rand(3, 90, 64)]
    with torch.no_grad():
        got, want = pruned(images), full(images)
    for g, w in zip(got, want, strict=True):
        assert len(g["boxes"]) > 0
        assert g["labels"].tolist() == [2] * len(g["labels"])
        assert w["labels"].tolist() == [phone] * len(w["labels"])
        assert g["scores"].tolist() == [1.0] * len(g["scores"])
        # the same proposals moved by the same (cell phone) deltas
        assert sorted(g["boxes"].tolist()) == sorted(w["boxes"].tolist())


@pytest.mark.parametrize("pretrained", [False, True])
def test_inference_model_loads_a_trained_state_dict(checkpoint, pretrained, tmp_path):
    cfg = _cfg(checkpoint if pretrained else None, {"a": "dog"})
    trained = build_model(cfg, ["a", "b"])
    apply_freeze(trained, architecture=ARCH, depth=3)  # some BatchNorm2d became FrozenBatchNorm2d
    trained.eval()
    torch.save(trained.state_dict(), tmp_path / "trained.pth")
    saved = torch.load(tmp_path / "trained.pth", map_location="cpu", weights_only=True)
    # strict loads, with and without torch's per-module metadata
    build_inference_model(ARCH, 2, model_kwargs(cfg), pretrained=pretrained).load_state_dict(saved)
    model = build_inference_model(ARCH, 2, model_kwargs(cfg), pretrained=pretrained)
    model.load_state_dict(dict(saved))
    model.eval()
    image = [torch.rand(3, 64, 72)]
    with torch.no_grad():
        got, want = model(image)[0], trained(image)[0]
    assert len(want["boxes"]) > 0
    torch.testing.assert_close(got["boxes"], want["boxes"])
    torch.testing.assert_close(got["scores"], want["scores"])
    assert torch.equal(got["labels"], want["labels"])


@pytest.mark.parametrize(
    "pretrained,kind,eps", [(False, torch.nn.BatchNorm2d, 1e-5), (True, FrozenBatchNorm2d, 0.0)]
)
def test_inference_model_resnet50_fpn_batchnorm(pretrained, kind, eps):
    # torchvision's COCO_V1 resnet50_fpn runs its FrozenBatchNorm2d with eps 0.0
    model = build_inference_model("fasterrcnn_resnet50_fpn", 2, SIZES, pretrained=pretrained)
    norms = [
        m for m in model.backbone.body.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))
    ]
    assert len(norms) == 53 and all(type(m) is kind and m.eps == eps for m in norms)
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 12


def test_model_kwargs():
    assert model_kwargs(_cfg(None)) == {"min_size": 64, "max_size": 96}


@pytest.mark.parametrize("name", ["DEFAULT", "COCO_V1"])
def test_weights_names_resolve_without_download(name):
    enum = _resolve_weights("fasterrcnn_resnet50_fpn", name)
    assert enum.name == "COCO_V1" and len(enum.meta["categories"]) == 91


def test_bad_weights_name():
    with pytest.raises(
        ConfigError, match=r"model\.weights: unknown weights 'COCO_V2'.*accepted: COCO_V1, DEFAULT"
    ):
        build_model(_cfg("COCO_V2"), ["a"])


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=f"checkpoint file not found: {missing}"):
        build_model(_cfg(missing), ["a"])


def test_checkpoint_of_a_pruned_model_is_refused(tmp_path):
    path = tmp_path / "k2.pth"
    torch.save(get_model(ARCH, weights=None, weights_backbone=None, num_classes=3).state_dict(), path)
    with pytest.raises(
        ConfigError,
        match=rf"{path} does not match a 91-class {ARCH}.*size mismatch for "
        r"roi_heads\.box_predictor\.cls_score\.weight",
    ):
        build_model(_cfg(path), ["a"])


def test_checkpoint_with_missing_and_unexpected_keys(source, tmp_path):
    state = dict(source)
    del state["rpn.head.conv.0.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(
        ConfigError, match=r"1 missing keys: rpn\.head\.conv\.0\.0\.weight; 1 unexpected keys: extra"
    ):
        build_model(_cfg(path), ["a"])


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=f"cannot read checkpoint {path}"):
        build_model(_cfg(path), ["a"])


def test_unknown_coco_name_in_class_map(checkpoint):
    with pytest.raises(ConfigError, match=r"unknown COCO category 'cellphone' \(closest: 'cell phone'"):
        build_model(_cfg(checkpoint, {"phone": "cellphone"}), ["phone"])


def test_class_map_key_that_is_not_a_dataset_class():
    with pytest.raises(
        ConfigError,
        match=r"'racoon' \(did you mean 'raccoon'\?\) is not a dataset class; "
        r"dataset classes: 'raccoon', 'fox'",
    ):
        build_model(_cfg(None, {"racoon": "bear"}), ["raccoon", "fox"])


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
                                  "ssdlite320_mobilenet_v3_large"])
def test_score_filter_per_family_and_the_one_val_evaluation_uses(arch, tiny_manifest):
    from trainables.architectures import DEFAULT_SCORE_THRESHOLDS, EVAL_SCORE_THRESHOLD, FAMILIES
    from trainables.config import TrialConfig
    from trainables.data import read_manifest
    from trainables.loop import _build_model
    from trainables.model import score_threshold, set_score_threshold

    kwargs = {} if FAMILIES[arch] == "ssd" else SIZES
    built = build_inference_model(arch, 2, kwargs)
    # the table is torchvision's own: what an export loaded with torchvision alone filters at
    assert score_threshold(built) == DEFAULT_SCORE_THRESHOLDS[FAMILIES[arch]]
    assert score_threshold(set_score_threshold(built, 0.0)) == 0.0
    with pytest.raises(ValueError, match=r"should be in the range \[0,1\], got 1.5"):
        set_score_threshold(built, 1.5)
    # a trial's model is evaluated at one low filter, whatever its family's own
    cfg = TrialConfig.model_validate({"model": {"architecture": arch, "weights": None, **kwargs}})
    trial_model, _ = _build_model(cfg, read_manifest(tiny_manifest), torch.device("cpu"))
    assert score_threshold(trial_model) == EVAL_SCORE_THRESHOLD == 0.001
