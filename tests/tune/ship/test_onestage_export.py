"""Exports of the one-stage families: .pt through torchvision alone, TorchScript, ONNX on ONNX Runtime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import calibrate_norms
from torchvision.models import get_model

from trainables.architectures import FAMILIES
from trainables.checkpoint import TrialState, capture_rng, save_checkpoint
from trainables.config import TrialConfig
from trainables.model import build_model, model_kwargs
from tune.ship.export import export_checkpoint
from tune.ship.predict import load_export

# one architecture per family; RetinaNet v2 differs from v1 in its norms only
ARCHS = ["ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"]
CLASSES = [{"label": 1, "name": "circle", "dataset_id": 5}, {"label": 2, "name": "square", "dataset_id": 17}]


def _trained(arch: str, root: Path) -> tuple[torch.nn.Module, Path, Path]:
    """A K = 2 model as a trial builds it, with scores spread so it detects, saved as a trial checkpoint."""
    sizes = {} if FAMILIES[arch] == "ssd" else {"min_size": 96, "max_size": 96}
    cfg = TrialConfig.model_validate({"model": {"architecture": arch, "weights": None, **sizes}})
    torch.manual_seed(0)
    model = build_model(cfg.model, [c["name"] for c in CLASSES])
    calibrate_norms(model, torch.Generator().manual_seed(1))
    if FAMILIES[arch] != "ssd":  # the prior (p = 0.01) sits below the score threshold: open classes 1..K
        conv = model.head.classification_head.cls_logits
        with torch.no_grad():
            for c in range(conv.out_channels):
                if c % (len(CLASSES) + 1):
                    conv.weight[c].normal_(0.0, 0.05)
                    conv.bias[c] = 0.0
    metrics = {"epoch": 1, "AP": 0.3, "AR100": 0.2}
    state = TrialState(epoch=1, model=model.state_dict(), optimizer={}, scheduler={}, scaler={}, rng=capture_rng(),
                       config=cfg.resolved(), metrics=metrics, classes=CLASSES, architecture=arch,
                       model_kwargs=model_kwargs(cfg.model), history=[metrics])
    save_checkpoint(root / "ckpt", state)
    return model.eval(), root / "ckpt", export_checkpoint(root / "ckpt", root / "best.pt")


@pytest.fixture(scope="module", params=ARCHS)
def trained(request, tmp_path_factory):
    return request.param, *_trained(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(3))


def _by_score(det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    det = {k: torch.as_tensor(v) for k, v in det.items()}
    order = torch.argsort(det["scores"], descending=True, stable=True)
    return {k: v[order] for k, v in det.items()}


def test_pt_export_loads_with_torchvision_alone_and_predicts(trained, image):
    arch, model, _, out = trained
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["num_classes"] == 3 and ckpt["architecture"] == arch
    ssd = FAMILIES[arch] == "ssd"
    assert ckpt["model_kwargs"] == ({} if ssd else {"min_size": 96, "max_size": 96})
    assert ckpt["image_size"] == ({"min_size": 320, "max_size": 320} if ssd else {"min_size": 96, "max_size": 96})
    plain = get_model(arch, weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
    plain.load_state_dict(ckpt["state_dict"])
    loaded, meta = load_export(out)  # what `boxtune predict` runs
    with torch.inference_mode():
        want = model([image])[0]
        got_plain, got_loaded = plain.eval()([image])[0], loaded([image])[0]
    assert len(want["boxes"]) > 0 and set(want["labels"].tolist()) <= {1, 2}  # never label 0
    for got in (got_plain, got_loaded):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(got[key], want[key]), key
    assert meta["classes"] == CLASSES


def test_torchscript_export_matches_eager(trained, image, tmp_path):
    _, model, ckpt, _ = trained
    out = export_checkpoint(ckpt, tmp_path / "best.ts", fmt="torchscript")
    assert json.loads(Path(f"{out}.json").read_text())["num_classes"] == 3
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".* always returns", category=UserWarning)
        scripted = torch.jit.load(str(out))
        with torch.inference_mode():
            _, got = scripted([image])
            want = model([image])
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(got[0][key], want[0][key]), key


def test_onnx_export_matches_torch_on_onnx_runtime(trained, image, tmp_path):
    _, model, ckpt, _ = trained
    import onnxruntime

    out = export_checkpoint(ckpt, tmp_path / "best.onnx", fmt="onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, labels, scores = session.run(None, {"image": image.numpy()})
    with torch.inference_mode():
        want = _by_score(model([image])[0])
    got = _by_score({"boxes": boxes, "labels": labels, "scores": scores})
    assert len(got["scores"]) == len(want["scores"]) > 0
    # ONNX Runtime sums in another order: float32 noise, which may swap detections of near-equal
    # score; every detection has its twin (same label, score within 1e-3, box within 0.01 px)
    torch.testing.assert_close(got["scores"], want["scores"], atol=1e-3, rtol=0)
    for box, label, score in zip(want["boxes"], want["labels"], want["scores"], strict=True):
        twins = (got["labels"] == label) & ((got["scores"] - score).abs() < 1e-3)
        assert twins.any() and (got["boxes"][twins] - box).abs().amax(dim=1).min() < 1e-2
