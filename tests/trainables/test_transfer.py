"""Fine-tuning from a local 91-class weights file, as an offline machine uses torchvision's COCO weights.

The file is made here: a 91-class MobileNetV3 Faster R-CNN trained a few steps on the transfer
source shapes (each class at its COCO row), saved as a plain state_dict. Then: the pruned head's
rows are the file's rows, the frozen stages still hold the file's values after an epoch of
fine-tuning, and a sweep with ``model.weights`` pointing at the file runs end to end.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_MODEL
from torchvision.models import get_model, get_model_weights

from trainables.config import ModelConfig
from trainables.data import build_manifest
from trainables.data.demo import SOURCE_SPEC, TARGET_SPEC, make_shapes_dataset
from trainables.freeze import apply_freeze
from trainables.heads import coco_label
from trainables.loop import TrialResources, run_trial
from trainables.model import COCO_NUM_CLASSES, build_model, cache_weights
from trainables.reporting import LocalReporter
from tune.config import SweepConfig
from tune.workflow import run_sweep

ARCH = TINY_MODEL["architecture"]
# target classes: three the source knows (at their own COCO rows) and one it never saw
CLASS_MAP = {"sports ball": "sports ball", "stop sign": "stop sign", "kite": "kite", "clock": "clock", "cross": None}
_STEPS = 4  # SGD steps on the source: enough to move every layer off its initialisation


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory):
    """A 91-class state_dict trained ``_STEPS`` steps on 8 source images, and the path it is saved at."""
    from trainables.augment import build_eval_transforms
    from trainables.data import DetectionDataset, collate_detection

    tmp = tmp_path_factory.mktemp("source")
    manifest = build_manifest(make_shapes_dataset(tmp / "data", SOURCE_SPEC, num_images=10, image_size=96, seed=0),
                              val_fraction=0.2, seed=0)
    rows = torch.tensor([0] + [coco_label(n) for n in manifest.class_names])  # label k -> its COCO row
    torch.manual_seed(0)
    model = get_model(ARCH, weights=None, weights_backbone=None, num_classes=COCO_NUM_CLASSES, min_size=96,
                      max_size=96, box_batch_size_per_image=64)
    loader = torch.utils.data.DataLoader(DetectionDataset(manifest.records("train"), transforms=build_eval_transforms()),
                                         batch_size=4, shuffle=True, collate_fn=collate_detection)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()
    step = 0
    while step < _STEPS:
        for images, targets in loader:
            targets = [{"boxes": t["boxes"], "labels": rows[t["labels"]]} for t in targets]
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == _STEPS:
                break
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp / "source.pth"
    torch.save(state, path)
    return state, path


@pytest.fixture(scope="module")
def target_data(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("target"), TARGET_SPEC, num_images=12, image_size=96, seed=1)


def _model_section(path) -> dict:
    return {**TINY_MODEL, "weights": str(path), "class_map": CLASS_MAP}


def test_pruned_head_rows_are_the_sources(source_weights):
    state, path = source_weights
    names = list(CLASS_MAP)
    model = build_model(ModelConfig.model_validate(_model_section(path)), names)
    head = model.roi_heads.box_predictor
    src_w, src_b = state["roi_heads.box_predictor.cls_score.weight"], state["roi_heads.box_predictor.cls_score.bias"]
    src_bw, src_bb = state["roi_heads.box_predictor.bbox_pred.weight"], state["roi_heads.box_predictor.bbox_pred.bias"]
    assert head.cls_score.weight.shape == (len(names) + 1, 1024)
    for label, name in enumerate(["__background__", *names]):
        if label and CLASS_MAP[name] is None:
            assert not torch.equal(head.cls_score.weight[label], src_w[0])  # fresh, not a copy
            continue
        row = 0 if label == 0 else coco_label(CLASS_MAP[name])
        assert torch.equal(head.cls_score.weight[label], src_w[row]) and head.cls_score.bias[label] == src_b[row]
        assert torch.equal(head.bbox_pred.weight[4 * label : 4 * label + 4], src_bw[4 * row : 4 * row + 4])
        assert torch.equal(head.bbox_pred.bias[4 * label : 4 * label + 4], src_bb[4 * row : 4 * row + 4])
    # the rest of the network is the file's, exactly
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_heads.box_predictor")}
    assert all(torch.equal(v, state[k]) for k, v in body.items())


def test_named_weights_load_from_torchs_cache_as_the_file_does(source_weights, tmp_path, monkeypatch):
    # torchvision's COCO weights by name, on a machine whose torch cache already holds the file (as
    # the driver's download leaves it): nothing is fetched, and the model is the file's
    _, path = source_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy"):  # a download would be refused, not reach the network
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    named = ModelConfig.model_validate({**_model_section(path), "weights": "DEFAULT"})
    url = get_model_weights(ARCH)["DEFAULT"].url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)
    assert cache_weights(named) == cached
    torch.manual_seed(0)  # the fresh rows of "cross" are drawn the same in both
    from_name = build_model(named, list(CLASS_MAP)).state_dict()
    torch.manual_seed(0)
    from_file = build_model(ModelConfig.model_validate(_model_section(path)), list(CLASS_MAP)).state_dict()
    assert from_name.keys() == from_file.keys()
    assert all(torch.equal(from_name[k], from_file[k]) for k in from_file)


def test_frozen_stages_keep_the_sources_values(source_weights, target_data, tmp_path):
    state, path = source_weights
    manifest = build_manifest(target_data, val_fraction=0.25, seed=0)
    depth = 5  # the whole MobileNetV3 body
    probe = build_model(ModelConfig.model_validate(_model_section(path)), manifest.class_names)
    apply_freeze(probe, architecture=ARCH, depth=depth)
    frozen = {n for n, p in probe.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.body.") for n in frozen)
    cfg = {"model": _model_section(path), "training": {"epochs": 1, "seed": 0},
           "hparams": {"optimizer": "sgd", "lr": 0.01, "batch_size": 4, "freeze_depth": depth}}
    reporter = LocalReporter(tmp_path / "trial")
    run_trial(cfg, manifest=manifest, reporter=reporter, resources=TrialResources(cpus=2, device="cpu"))
    trained = torch.load(reporter.latest_checkpoint() / "checkpoint.pt", weights_only=True)["model"]
    body = {k: v for k, v in trained.items() if k.startswith("backbone.body.")}
    assert body and all(torch.equal(v, state[k]) for k, v in body.items())  # weights and BN statistics
    assert not torch.equal(trained["backbone.fpn.inner_blocks.0.0.weight"], state["backbone.fpn.inner_blocks.0.0.weight"])


def test_sweep_from_a_local_weights_file(source_weights, target_data, tmp_path, ray_local):
    _, path = source_weights
    cfg = SweepConfig.model_validate({
        "name": "from_file",
        "data": {"path": str(target_data), "val_fraction": 0.25, "seed": 0},
        "model": _model_section(path),
        "training": {"epochs": 1, "seed": 0},
        "search": {"space": {"lr": {"loguniform": [0.002, 0.02]}, "freeze_depth": {"choice": [0, 5]}, "batch_size": 4},
                   "num_trials": 2, "sampler": "random", "seed": 0},
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1},
        "max_concurrent": 1,
        "storage": str(tmp_path / "runs"),
        "retries": 0,
    })
    rows = run_sweep(cfg, echo=lambda *_: None)
    assert len(rows) == 2 and all(r["status"] == "TERMINATED" and r["error"] is None for r in rows)
    assert all(r["AP"] >= 0.0 for r in rows)
    saved = json.loads(next((tmp_path / "runs" / "from_file").glob("*/params.json")).read_text())
    assert set(saved) == {"lr", "freeze_depth", "batch_size"}
