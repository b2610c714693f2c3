"""One trial as plain Python: exact resume, checkpoint contents, non-finite loss, `boxtune train`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import TINY_MODEL

from trainables.checkpoint import load_checkpoint
from trainables.config import parse_trial_config
from trainables.errors import NonFiniteLossError, TrainingError
from trainables.loop import TrialResources, run_trial
from trainables.reporting import LocalReporter

# augmentation, warm-up and a step schedule all draw on or carry state that a resume must restore
HPARAMS = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "warmup_iters": 3, "batch_size": 4, "hflip_p": 0.5,
           "jitter_p": 0.5, "crop_p": 0.3}
STEP = {"schedule": "step", "step_size": 2, "gamma": 0.5}  # halves the rate after epoch 2
TIMING = ("images_per_s", "train_s", "eval_s")


def _config(epochs, **hparams):
    return {"model": TINY_MODEL, "training": {"epochs": epochs, "seed": 7}, "hparams": {**HPARAMS, **hparams}}


class _StopAfter(LocalReporter):
    """Stops the trial right after epoch ``n`` is reported, as a killed process would."""

    def __init__(self, out, n):
        super().__init__(out)
        self.n = n

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if metrics["epoch"] == self.n:
            raise KeyboardInterrupt


def _strip(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_two_plus_two_epochs_equal_four_straight(tmp_path, tiny_manifest):
    one = tiny = TrialResources(cpus=1, device="cpu")  # the same threads both ways
    straight = LocalReporter(tmp_path / "straight")
    run_trial(_config(4, **STEP), manifest=tiny_manifest, reporter=straight, resources=one)

    with pytest.raises(KeyboardInterrupt):
        run_trial(_config(4, **STEP), manifest=tiny_manifest, reporter=_StopAfter(tmp_path / "split", 2),
                  resources=tiny)
    resumed = LocalReporter(tmp_path / "split")
    assert load_checkpoint(resumed.latest_checkpoint()).epoch == 2
    run_trial(_config(4, **STEP), manifest=tiny_manifest, reporter=resumed, resources=tiny)

    a = load_checkpoint(straight.latest_checkpoint())
    b = load_checkpoint(resumed.latest_checkpoint())
    assert a.epoch == b.epoch == 4
    assert a.model.keys() == b.model.keys()
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    assert [_strip(m) for m in straight.history()] == [_strip(m) for m in resumed.history()]
    assert a.scheduler == b.scheduler
    # the step schedule halves the rate after epoch 2
    lrs = [m["lr"] for m in straight.history()]
    assert lrs[1] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.005)


def test_checkpoint_is_weights_only_and_complete(tmp_path, tiny_manifest):
    reporter = LocalReporter(tmp_path / "out")
    metrics = run_trial(_config(1), manifest=tiny_manifest, reporter=reporter, resources=TrialResources(cpus=1, device="cpu"))
    path = reporter.latest_checkpoint() / "checkpoint.pt"
    raw = torch.load(path, weights_only=True)  # no pickled code: loads under the safe unpickler
    assert raw["format_version"] == 1 and raw["epoch"] == 1
    assert [c["dataset_id"] for c in raw["classes"]] == [5, 17, 42]
    assert raw["model_kwargs"] == {"min_size": 96, "max_size": 96}
    assert set(raw["rng"]) >= {"python", "numpy", "torch"}
    # the recorded config is complete and validates again as it is
    again = parse_trial_config(raw["config"])
    assert again.hparams.momentum == 0.9 and again.hparams.warmup_iters == 3 and again.training.seed == 7
    # keys of branches not chosen are not recorded (adam's beta1, the step schedule's step_size)
    assert "beta1" not in raw["config"]["hparams"] and "step_size" not in raw["config"]["hparams"]
    assert raw["metrics"]["AP"] == metrics["AP"]
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr",
                "images_per_s", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert key in metrics, key
    events = list((tmp_path / "out").glob("events.out.tfevents.*"))
    assert len(events) == 1


def test_resume_with_another_config_is_refused(tmp_path, tiny_manifest):
    reporter = LocalReporter(tmp_path / "out")
    run_trial(_config(1), manifest=tiny_manifest, reporter=reporter, resources=TrialResources(cpus=1, device="cpu"))
    with pytest.raises(TrainingError, match=r"another config \(training\.epochs: 1 -> 2\); refusing to resume"):
        run_trial(_config(2), manifest=tiny_manifest, reporter=reporter, resources=TrialResources(cpus=1, device="cpu"))


def test_a_refused_resume_names_a_key_one_side_lacks():
    from trainables.loop import _config_difference

    assert _config_difference({"training": {"epochs": 2}}, {"training": {"epochs": 2, "grad_clip_norm": None}}) == (
        "training.grad_clip_norm: <missing> -> None")
    assert _config_difference({"a": 1, "b": {"c": 2}}, {"a": 3, "b": {"c": 2}}) == "a: 1 -> 3"


def test_non_finite_loss_names_epoch_and_step(tmp_path, tiny_manifest):
    cfg = _config(2, lr=10.0, warmup_iters=0, hflip_p=0.0, jitter_p=0.0, crop_p=0.0)
    with pytest.raises(NonFiniteLossError) as err:
        run_trial(cfg, manifest=tiny_manifest, reporter=LocalReporter(tmp_path / "out"),
                  resources=TrialResources(cpus=1, device="cpu"))
    assert err.value.epoch == 1 and err.value.step >= 1
    assert f"non-finite loss at epoch 1, step {err.value.step}" in str(err.value)
    assert not (tmp_path / "out" / "checkpoints").exists()  # no NaN model was checkpointed


def test_boxtune_train_cli(tmp_path, tiny_demo):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(tiny_demo), "val_fraction": 0.25}, "model": TINY_MODEL,
                                      "training": {"epochs": 1}, "hparams": {"lr": 0.01, "batch_size": 4}}))
    cmd = [sys.executable, "-m", "tune.cli", "train", str(config), "--out", str(tmp_path / "out"), "--threads", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [ln for ln in first.stdout.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 1 and " AP " in lines[0] and "AR100" in lines[0] and "loss" in lines[0]
    assert json.loads((tmp_path / "out" / "best.json").read_text())["epoch"] == 1
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    bad = subprocess.run([*cmd[:4], str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "missing.yaml: cannot read config" in bad.stderr
