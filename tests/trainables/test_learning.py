"""The trainable learns: about three CPU minutes on the demo data lift AP far above the untrained model's."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from trainables.augment import build_eval_transforms
from trainables.coco_eval import build_coco_gt, evaluate_detections
from trainables.config import parse_trial_config
from trainables.data import DetectionDataset, build_manifest, collate_detection, make_demo_dataset
from trainables.loop import TrialResources, predict, run_trial
from trainables.model import build_model
from trainables.reporting import LocalReporter

CONFIG = {
    "model": {"architecture": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None, "min_size": 160,
              "max_size": 160, "box_batch_size_per_image": 128},
    "training": {"epochs": 3, "seed": 0},
    "hparams": {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "warmup_iters": 20, "batch_size": 4, "hflip_p": 0.5},
}


@pytest.mark.slow
def test_training_lifts_ap_clearly(tmp_path):
    data = make_demo_dataset(tmp_path / "demo", num_images=240, image_size=160, seed=0)
    manifest = build_manifest(data, val_fraction=0.2, seed=0)
    val = manifest.records("val")

    # the model before any training: same seed, same construction as the trial's
    torch.manual_seed(CONFIG["training"]["seed"])
    untrained = build_model(parse_trial_config(CONFIG).model, manifest.class_names)
    loader = DataLoader(DetectionDataset(val, transforms=build_eval_transforms()), batch_size=4,
                        collate_fn=collate_detection)
    gt = build_coco_gt(val, [(c.dataset_id, c.name) for c in manifest.classes])
    before = evaluate_detections(gt, predict(untrained, loader, device=torch.device("cpu")),
                                 label_to_dataset_id=manifest.label_to_dataset_id)

    reporter = LocalReporter(tmp_path / "out")
    run_trial(CONFIG, manifest=manifest, reporter=reporter, resources=TrialResources(cpus=2, device="cpu"))
    history = reporter.history()
    after = history[-1]
    assert before["AP"] < 0.01 and before["AP50"] < 0.03
    # measured on this configuration: AP 0.171, AP50 0.427 after epoch 3 (from ~0.000 untrained)
    assert after["AP50"] > 0.25, history
    assert after["AP"] > 0.08 and after["AP"] > 10 * before["AP"], history
    assert history[-1]["loss"] < history[0]["loss"]
