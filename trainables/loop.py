"""One trial, from a manifest and a config to per-epoch losses and COCO AP/AR.

``run_trial`` is the whole story in order: data, model (pruned head, freeze), optimiser and
schedule, resume, then per epoch: train, evaluate, checkpoint, report. ``boxtune train`` calls it
with a ``LocalReporter``; a Ray Tune trial calls it with a ``RayReporter``. Nothing here knows
which. The data it reads is built by ``trainables.loaders``; its GPU share, peak and
out-of-memory error are ``trainables.gpu_memory``'s.
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

from trainables.architectures import EVAL_SCORE_THRESHOLD, family_of
from trainables.checkpoint import TrialState, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from trainables.coco_eval import COCO_STAT_NAMES, coco_stats, per_class_stats, run_cocoeval
from trainables.config import TrialConfig, parse_trial_config
from trainables.data import ImageRecord, Manifest, read_manifest
from trainables.detections import write_detections
from trainables.errors import ConfigError, DataError, NonFiniteLossError, TrainingError
from trainables.files import detections_file
from trainables.freeze import FreezeReport, apply_freeze
from trainables.gpu_memory import OutOfMemoryGuard, limit_gpu_memory, measured_context_mib, peak_gpu_memory
from trainables.intervals import ImageMatches, objective_interval
from trainables.loaders import TrialData, build_trial_data
from trainables.model import build_model, model_kwargs, set_score_threshold
from trainables.objective import Objective, check_measurable, class_metrics, epoch_summary, parse_objective
from trainables.optim import build_optimizer, build_scheduler
from trainables.reporting import Reporter
from trainables.tensorboard import TrialWriter

__all__ = ["LOSS_NAMES", "loss_metric", "TrialResources", "run_trial", "predict"]

log = logging.getLogger(__name__)

# The loss dict torchvision returns in training, per family; "loss" is their sum. Each part is
# reported as loss_metric(name): Faster R-CNN's names as they are, the one-stage ones prefixed
# ("classification" -> "loss_classification").
LOSS_NAMES: dict[str, tuple[str, ...]] = {
    "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
    "retinanet": ("classification", "bbox_regression"),
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
    "ssd": ("bbox_regression", "classification"),
}


def loss_metric(name: str) -> str:
    """The metric key a loss part is reported under."""
    return name if name == "loss" or name.startswith("loss_") else f"loss_{name}"


@dataclass(frozen=True)
class TrialResources:
    """What the host gave this trial: CPU threads and a device (from Ray's assignment, or auto)."""

    cpus: int | None = None  # torch intra-op threads; None keeps the process's (boxtune train passes its count)
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = cuda if available else cpu
    # share of the GPU's memory this trial's allocator may hold (0, 1]; None = no limit. Trials
    # packed on one GPU each get their share, so one that outgrows it fails alone with an OOM.
    gpu_memory_fraction: float | None = None
    # the CUDA context that share leaves out (trainables.gpu_memory.share_limit_mib), MiB; None:
    # the measured table's, read here (a sweep passes the driver's)
    gpu_context_mib: float | None = None

    def __post_init__(self) -> None:
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ConfigError(f"gpu_memory_fraction: should be in (0, 1], got {self.gpu_memory_fraction}")

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
    """bf16 where the GPU computes it natively (Ampere and later), else fp16 with the scaler; None (off) on CPU.

    Emulated bf16 (``is_bf16_supported()``'s default on older GPUs) runs slower than fp16.
    """
    if not enabled or device.type != "cuda":
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before the including_emulation argument: only native support counted
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def _train_one_epoch(model, loader, optimizer, scheduler, scaler, *, epoch, device, amp_dtype, grad_clip_norm,
                     loss_names):
    model.train()
    sums = dict.fromkeys(("loss", *loss_names), 0.0)
    steps = images = 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    for step, (batch_images, targets) in enumerate(loader):
        batch_images = [img.to(device, non_blocking=True) for img in batch_images]
        targets = [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
                   for t in targets]
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss_dict = model(batch_images, targets)
        loss = sum(loss_dict[k] for k in loss_names)
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
        for k in loss_names:
            sums[k] += loss_dict[k].item()
        steps += 1
        images += len(batch_images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    means = {loss_metric(k): v / max(steps, 1) for k, v in sums.items()}
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
            # label 0 is background or, in sigmoid heads, the closed reserved index: never a class
            keep = output["labels"] > 0
            out[int(target["image_id"])] = {k: v[keep].detach().float().cpu() if v.is_floating_point() else v[keep].cpu()
                                            for k, v in output.items()}
    return out


def run_trial(
    config: TrialConfig | dict[str, Any],
    *,
    manifest: Manifest | str | os.PathLike,
    reporter: Reporter,
    resources: TrialResources | None = None,
) -> dict[str, float]:
    """Fine-tune one pruned detector (any family of ``ARCHITECTURES``); report every epoch; return the last epoch's metrics.

    Resumes from ``reporter.latest_checkpoint()`` when there is one: 2 epochs, stop, 2 more give
    the same weights and metrics as 4 straight (on CPU).
    """
    cfg = parse_trial_config(config)
    hp, tr = cfg.hparams, cfg.training
    resources = resources or TrialResources()
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    train_records, val_records = _splits(manifest)
    objective = parse_objective(cfg.metric, key="metric")
    check_measurable(objective, val_records, manifest.classes)

    device = resources.resolve_device()
    context_mib = _gpu_context_mib(resources, device)
    limit_gpu_memory(device, resources.gpu_memory_fraction, context_mib)
    amp_dtype = _amp_dtype(device, tr.amp)
    # undone in reverse however the trial ends: an out-of-memory error named, the writer closed, threads put back
    with contextlib.ExitStack() as undo:
        undo.enter_context(_torch_threads(resources.cpus))
        _seed_everything(tr.seed)
        model, freeze = _build_model(cfg, manifest, device)
        data = build_trial_data(cfg, manifest, train_records, val_records, cpus=resources.cpus, device=device)
        optimizer = build_optimizer([(n, p) for n, p in model.named_parameters() if p.requires_grad], hp)
        scheduler = build_scheduler(optimizer, hp, epochs=tr.epochs, iters_per_epoch=len(data.train_loader))
        # A scaler is needed for fp16 only; bf16 and fp32 run it disabled (a no-op that still checkpoints).
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        start_epoch, history = _resume(reporter.latest_checkpoint(), cfg, model, optimizer, scheduler, scaler)

        writer = undo.enter_context(contextlib.closing(_trial_writer(reporter, cfg, manifest)))
        out_of_memory = undo.enter_context(OutOfMemoryGuard(device, resources.gpu_memory_fraction, context_mib,
                                                            epoch=start_epoch + 1))
        metrics: dict[str, float] = {}
        for epoch in range(start_epoch, tr.epochs):
            out_of_memory.epoch = epoch + 1
            metrics, detections = _train_and_evaluate(epoch, model, data, optimizer, scheduler, scaler, cfg=cfg,
                                                      manifest=manifest, objective=objective, freeze=freeze,
                                                      device=device, amp_dtype=amp_dtype)
            history.append(metrics)
            metrics.update(epoch_summary(objective, metrics, history))  # score, best epoch by score
            # before the report: Ray copies the trial folder to storage with the epoch's checkpoint
            write_detections(reporter.trial_dir / detections_file(epoch + 1), detections)
            writer.epoch(metrics, model=model, val_set=data.val_set, detections=detections, device=device)
            _report(reporter, metrics, TrialState(
                epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=capture_rng(),
                config=cfg.resolved(), metrics=metrics, classes=_class_records(manifest),
                architecture=cfg.model.architecture, model_kwargs=model_kwargs(cfg.model), history=history,
            ))
    return metrics


def _splits(manifest: Manifest) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The train and val records; neither may be empty."""
    train_records, val_records = manifest.records("train"), manifest.records("val")
    if not train_records:
        raise DataError("the manifest's train split is empty")
    if not val_records:
        raise DataError("the manifest's val split is empty: set data.val_fraction > 0 or give a validation set")
    return train_records, val_records


def _gpu_context_mib(resources: TrialResources, device: torch.device) -> float:
    """The CUDA context the trial's share of a GPU leaves out, MiB; 0 without a share."""
    if device.type != "cuda" or resources.gpu_memory_fraction is None:
        return 0.0
    return resources.gpu_context_mib if resources.gpu_context_mib is not None else measured_context_mib()


def _build_model(cfg: TrialConfig, manifest: Manifest, device: torch.device) -> tuple[torch.nn.Module, FreezeReport]:
    """The pruned detector, frozen to ``hparams.freeze_depth``, on ``device``; and what the freeze left trainable."""
    model = build_model(cfg.model, manifest.class_names)
    # val detections down to one low score for every family (FCOS's own filter is 0.2, SSDlite's 0.001)
    set_score_threshold(model, EVAL_SCORE_THRESHOLD)
    freeze = apply_freeze(model, architecture=cfg.model.architecture, depth=cfg.hparams.freeze_depth)
    log.info("freeze depth %d: %d trainable, %d frozen parameters", freeze.depth, freeze.trainable_params, freeze.frozen_params)
    model.to(device)
    return model, freeze


def _resume(checkpoint_dir: Path | None, cfg: TrialConfig, model, optimizer, scheduler,
            scaler) -> tuple[int, list[dict[str, float]]]:
    """Put every state back from ``checkpoint_dir`` (RNGs too); return the epochs done and their metrics.

    Without a checkpoint, a fresh start: (0, []). A finished trial's checkpoint, or one written
    with another config, is refused.
    """
    if checkpoint_dir is None:
        return 0, []
    state = load_checkpoint(checkpoint_dir)
    if not state.optimizer:
        raise TrainingError(f"{checkpoint_dir}: the checkpoint of a finished trial holds its weights only "
                            "(optimiser state removed to save disk); it cannot be resumed")
    if state.config != cfg.resolved():
        raise TrainingError(f"{checkpoint_dir}: checkpoint was written with another config "
                            f"({_config_difference(state.config, cfg.resolved())}); refusing to resume")
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    scaler.load_state_dict(state.scaler)
    restore_rng(state.rng)
    log.info("resumed from %s after epoch %d", checkpoint_dir, state.epoch)
    return state.epoch, list(state.history)


def _trial_writer(reporter: Reporter, cfg: TrialConfig, manifest: Manifest) -> TrialWriter:
    """The trial's TensorBoard events, in its own folder, as one HParams session."""
    # the architecture is a hyperparameter too when a sweep compares families
    hparams = {**cfg.hparams.model_dump(mode="json"), "architecture": cfg.model.architecture}
    return TrialWriter(reporter.trial_dir, hparams=hparams, image_every=cfg.training.image_log_every,
                       image_count=cfg.training.image_log_count, class_names=manifest.class_names)


def _train_and_evaluate(epoch: int, model, data: TrialData, optimizer, scheduler, scaler, *, cfg: TrialConfig,
                        manifest: Manifest, objective: Objective, freeze: FreezeReport, device: torch.device,
                        amp_dtype: torch.dtype | None) -> tuple[dict[str, float], dict[int, dict[str, torch.Tensor]]]:
    """Train one epoch (0-based ``epoch``) and evaluate on the val split: the epoch's metrics and detections."""
    data.set_epoch(epoch, cfg.training.seed)
    losses, lr, images_per_s, train_s = _train_one_epoch(
        model, data.train_loader, optimizer, scheduler, scaler, epoch=epoch + 1, device=device,
        amp_dtype=amp_dtype, grad_clip_norm=cfg.training.grad_clip_norm,
        loss_names=LOSS_NAMES[family_of(cfg.model.architecture)],
    )
    t0 = time.perf_counter()
    # fp32, as `boxtune predict` runs: the val numbers are the shipped model's numbers
    detections = predict(model, data.val_loader, device=device)
    coco_eval = run_cocoeval(data.coco_gt, detections, label_to_dataset_id=manifest.label_to_dataset_id)
    coco, per_class = coco_stats(coco_eval), per_class_stats(coco_eval)
    # how far another draw of val images could move the objective (what a rung's evidence rule
    # reads), from the same matching: only the objective's cells are re-accumulated per resample
    low, high = objective_interval(ImageMatches.from_cocoeval(coco_eval), objective=objective,
                                   classes=manifest.classes)
    eval_s = time.perf_counter() - t0
    metrics = {
        "epoch": epoch + 1,
        **losses,
        "lr": lr,  # used by the epoch's last step
        "images_per_s": images_per_s,
        "threads": torch.get_num_threads(),  # torch's intra-op threads: CPU float sums, and so AP, depend on it
        "train_s": train_s,
        "eval_s": eval_s,
        **{k: float(coco[k]) for k in COCO_STAT_NAMES},
        **class_metrics(per_class, manifest.classes, objective),
        "objective_low": low,  # the objective's 95% interval over the val images (paired bootstrap)
        "objective_high": high,
        "trainable_params": freeze.trainable_params,
        "cache_hit_rate": data.cache_hit_rate(),  # share of the epoch's images not decoded again
        **peak_gpu_memory(device),
    }
    return metrics, detections


def _report(reporter: Reporter, metrics: dict[str, float], state: TrialState) -> None:
    """Hand the epoch's metrics and checkpoint to the reporter (which copies the checkpoint folder)."""
    tmp = Path(tempfile.mkdtemp(prefix="boxtune-ckpt-"))
    try:
        save_checkpoint(tmp, state)
        reporter.report(metrics, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _class_records(manifest: Manifest) -> list[dict[str, Any]]:
    return [{"label": c.label, "name": c.name, "dataset_id": c.dataset_id} for c in manifest.classes]


_MISSING = "<missing>"


def _config_difference(saved: Any, now: Any, prefix: str = "") -> str:
    """The first keys whose values differ between two resolved configs, as ``key: saved -> now``
    (``<missing>`` for a key one side lacks, as after an upgrade adds one)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        pairs = [(k, saved.get(k, _MISSING), now.get(k, _MISSING)) for k in sorted(set(saved) | set(now), key=str)]
        parts = [_config_difference(old, new, f"{prefix}{k}.") for k, old, new in pairs if old != new]
        return "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")
    shown = [v if v is _MISSING else repr(v) for v in (saved, now)]
    return f"{prefix.rstrip('.')}: {shown[0]} -> {shown[1]}"
