"""One trial, from a manifest and a config to per-epoch losses and COCO AP/AR.

``run_trial`` is the whole story in order: data, model (pruned head, freeze), optimiser and
schedule, resume, then per epoch: train, evaluate, checkpoint, report. ``boxtune train`` calls it
with a ``LocalReporter``; a Ray Tune trial calls it with a ``RayReporter``. Nothing here knows
which.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainables.augment import build_eval_transforms, build_train_transforms
from trainables.checkpoint import TrialState, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from trainables.coco_eval import COCO_STAT_NAMES, build_coco_gt, evaluate_detections
from trainables.config import TrialConfig, parse_trial_config
from trainables.data import DetectionDataset, Manifest, collate_detection, read_manifest
from trainables.errors import DataError, NonFiniteLossError, TrainingError
from trainables.freeze import apply_freeze
from trainables.model import build_model, model_kwargs
from trainables.optim import build_optimizer, build_scheduler
from trainables.reporting import Reporter, sort_score
from trainables.tensorboard import TrialWriter

__all__ = ["LOSS_NAMES", "TrialResources", "run_trial", "predict"]

log = logging.getLogger(__name__)

# torchvision's Faster R-CNN returns these four; "loss" is their sum
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


@dataclass(frozen=True)
class TrialResources:
    """What the host gave this trial: CPU threads and a device (from Ray's assignment, or auto)."""

    cpus: int | None = None  # torch intra-op threads; None keeps the process default
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = cuda if available else cpu

    def resolve_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        # Under Ray, CUDA_VISIBLE_DEVICES holds only the GPUs assigned to this trial, so cuda:0 is ours.
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Set intra-op threads for the trial and put the previous value back afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (off) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _loader(dataset, *, batch_size: int, shuffle: bool, workers: int, seed: int, device) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)  # reseeded per epoch: order does not depend on resume
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_detection,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _train_one_epoch(model, loader, optimizer, scheduler, scaler, *, epoch, device, amp_dtype, grad_clip_norm):
    model.train()
    sums = dict.fromkeys(("loss", *LOSS_NAMES), 0.0)
    steps = images = 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    for step, (batch_images, targets) in enumerate(loader):
        batch_images = [img.to(device, non_blocking=True) for img in batch_images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss_dict = model(batch_images, targets)
        loss = sum(loss_dict[k] for k in LOSS_NAMES)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(epoch, step, {"loss": loss.item(), **{k: v.item() for k, v in loss_dict.items()}})
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        scheduler.step()  # per iteration (see trainables.optim)
        sums["loss"] += loss.item()
        for k in LOSS_NAMES:
            sums[k] += loss_dict[k].item()
        steps += 1
        images += len(batch_images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    means = {k: v / max(steps, 1) for k, v in sums.items()}
    return means, lr, images / seconds if seconds > 0 else 0.0, seconds


@torch.inference_mode()
def predict(model, loader, *, device, amp_dtype=None) -> dict[int, dict[str, torch.Tensor]]:
    """Run the model over a loader of (images, targets); return detections by image id, on the CPU."""
    model.eval()
    out: dict[int, dict[str, torch.Tensor]] = {}
    for batch_images, targets in loader:
        batch_images = [img.to(device, non_blocking=True) for img in batch_images]
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(batch_images)
        for target, output in zip(targets, outputs, strict=True):
            out[int(target["image_id"])] = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                                            for k, v in output.items()}
    return out


def _class_records(manifest: Manifest) -> list[dict[str, Any]]:
    return [{"label": c.label, "name": c.name, "dataset_id": c.dataset_id} for c in manifest.classes]


def run_trial(
    config: TrialConfig | dict[str, Any],
    *,
    manifest: Manifest | str | os.PathLike,
    reporter: Reporter,
    resources: TrialResources | None = None,
) -> dict[str, float]:
    """Fine-tune one pruned Faster R-CNN; report every epoch; return the last epoch's metrics.

    Resumes from ``reporter.latest_checkpoint()`` when there is one: 2 epochs, stop, 2 more give
    the same weights and metrics as 4 straight (on CPU).
    """
    cfg = parse_trial_config(config)
    hp, tr = cfg.hparams, cfg.training
    resources = resources or TrialResources()
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    train_records, val_records = manifest.records("train"), manifest.records("val")
    if not train_records:
        raise DataError("the manifest's train split is empty")
    if not val_records:
        raise DataError("the manifest's val split is empty: set data.val_fraction > 0 or give a validation set")

    device = resources.resolve_device()
    amp_dtype = _amp_dtype(device, tr.amp)
    with _torch_threads(resources.cpus):
        _seed_everything(tr.seed)
        model = build_model(cfg.model, manifest.class_names)
        freeze = apply_freeze(model, architecture=cfg.model.architecture, depth=hp.freeze_depth)
        log.info("freeze depth %d: %d trainable, %d frozen parameters", freeze.depth, freeze.trainable_params, freeze.frozen_params)
        model.to(device)

        train_set = DetectionDataset(train_records, transforms=build_train_transforms(hp))
        val_set = DetectionDataset(val_records, transforms=build_eval_transforms())
        train_loader = _loader(train_set, batch_size=hp.batch_size, shuffle=True, workers=tr.num_workers,
                               seed=tr.seed, device=device)
        val_loader = _loader(val_set, batch_size=tr.eval_batch_size, shuffle=False, workers=tr.num_workers,
                             seed=tr.seed, device=device)
        iters_per_epoch = len(train_loader)
        coco_gt = build_coco_gt(val_records, [(c.dataset_id, c.name) for c in manifest.classes])

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = build_optimizer(named, hp)
        scheduler = build_scheduler(optimizer, hp, epochs=tr.epochs, iters_per_epoch=iters_per_epoch)
        # A scaler is needed for fp16 only; bf16 and fp32 run it disabled (a no-op that still checkpoints).
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        start_epoch, history = 0, []
        resume_dir = reporter.latest_checkpoint()
        if resume_dir is not None:
            state = load_checkpoint(resume_dir)
            if state.config != cfg.resolved():
                raise TrainingError(f"{resume_dir}: checkpoint was written with another config; refusing to resume")
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            scaler.load_state_dict(state.scaler)
            restore_rng(state.rng)
            start_epoch, history = state.epoch, list(state.history)
            log.info("resumed from %s after epoch %d", resume_dir, start_epoch)

        writer = TrialWriter(reporter.trial_dir, hparams=hp.model_dump(mode="json"), image_every=tr.image_log_every,
                             image_count=tr.image_log_count, class_names=manifest.class_names)
        metrics: dict[str, float] = {}
        try:
            for epoch in range(start_epoch, tr.epochs):
                train_loader.generator.manual_seed(tr.seed * 1_000_003 + epoch)
                losses, lr, images_per_s, train_s = _train_one_epoch(
                    model, train_loader, optimizer, scheduler, scaler, epoch=epoch + 1, device=device,
                    amp_dtype=amp_dtype, grad_clip_norm=tr.grad_clip_norm,
                )
                t0 = time.perf_counter()
                detections = predict(model, val_loader, device=device, amp_dtype=amp_dtype)
                coco = evaluate_detections(coco_gt, detections, label_to_dataset_id=manifest.label_to_dataset_id)
                eval_s = time.perf_counter() - t0
                metrics = {
                    "epoch": epoch + 1,
                    **losses,
                    "lr": lr,  # used by the epoch's last step
                    "images_per_s": images_per_s,
                    "train_s": train_s,
                    "eval_s": eval_s,
                    **{k: float(coco[k]) for k in COCO_STAT_NAMES},
                    "trainable_params": freeze.trainable_params,
                }
                history.append(metrics)
                best = max(history, key=lambda m: (sort_score(m["AP"]), sort_score(m["AR100"])))
                metrics.update(best_AP=best["AP"], best_AR100=best["AR100"], best_epoch=best["epoch"])
                writer.epoch(metrics, model=model, val_set=val_set, detections=detections, device=device)
                state = TrialState(
                    epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=capture_rng(),
                    config=cfg.resolved(), metrics=metrics, classes=_class_records(manifest),
                    architecture=cfg.model.architecture, model_kwargs=model_kwargs(cfg.model), history=history,
                )
                tmp = Path(tempfile.mkdtemp(prefix="boxtune-ckpt-"))
                try:
                    save_checkpoint(tmp, state)
                    reporter.report(metrics, tmp)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            writer.close()
    return metrics
