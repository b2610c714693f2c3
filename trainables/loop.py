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
from trainables.coco_eval import COCO_STAT_NAMES, build_coco_gt, evaluate_detections_by_class
from trainables.config import TrialConfig, family_of, parse_trial_config
from trainables.data import DetectionDataset, Manifest, collate_detection, read_manifest
from trainables.data.cache import DecodedImageCache
from trainables.errors import ConfigError, DataError, NonFiniteLossError, OutOfMemoryError, TrainingError
from trainables.freeze import apply_freeze
from trainables.gpu_memory import measured_context_mib, share_limit_mib
from trainables.model import build_model, model_kwargs
from trainables.objective import check_measurable, class_metrics, epoch_summary, parse_objective
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

    cpus: int | None = None  # torch intra-op threads; None keeps the process default
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


def _num_workers(setting: int | str, cpus: int | None, device: torch.device) -> int:
    """Loader processes for ``training.num_workers``; "auto" sizes them from the trial's CPU share.

    On CPU the model's own threads need every core (decoding is ~1% of a step there), so none; on
    a GPU, the share less one core for the training loop itself, at most 8 (the cache leaves them
    only the transforms and the images it does not hold).
    """
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    share = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(0, min(int(share) - 1, 8))


def _loader(dataset, *, batch_size: int, shuffle: bool, workers: int, seed: int, device,
            drop_last: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)  # reseeded per epoch: order does not depend on resume
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_detection,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


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


def _limit_gpu_memory(device: torch.device, fraction: float | None, context_mib: float) -> None:
    """Hold this process's CUDA allocator to ``fraction`` of the card less its context; start its peak count afresh."""
    if device.type != "cuda":
        return
    if fraction is not None:
        card_mib = torch.cuda.get_device_properties(device).total_memory / 2**20
        torch.cuda.set_per_process_memory_fraction(share_limit_mib(fraction, card_mib, context_mib) / card_mib, device)
    torch.cuda.reset_peak_memory_stats(device)


def _gpu_memory(device: torch.device) -> dict[str, float]:
    """Peak GPU memory of the trial so far, MiB: allocated by tensors, and held by the allocator (what packing must fit)."""
    if device.type != "cuda":
        return {}
    return {"gpu_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "gpu_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20}


def gpu_out_of_memory(epoch: int, *, fraction: float | None, card_mib: float, held_mib: float,
                      context_mib: float = 0.0) -> OutOfMemoryError:
    """The error for a trial that ran out of GPU memory in ``epoch``: how much it had, what shrinks it.

    ``card_mib`` is the card's memory, ``fraction`` the trial's share of it (``resources.gpu``
    below 1; None: the whole card), ``context_mib`` the CUDA context its share leaves out
    (``trainables.gpu_memory.share_limit_mib``) and ``held_mib`` the most its allocator held.
    """
    if fraction:
        limit = share_limit_mib(fraction, card_mib, context_mib)
        share = f"resources.gpu {fraction:g} of a {card_mib:.0f} MiB card" + (
            f", less {context_mib:.0f} MiB for the CUDA context" if context_mib else "")
    else:
        limit, share = card_mib, f"a whole {card_mib:.0f} MiB card"
    more = "give each trial a larger resources.gpu (fewer trials per GPU)" if fraction else "use a larger GPU"
    return OutOfMemoryError(
        f"out of GPU memory in epoch {epoch}: the trial may hold {limit:.0f} MiB ({share}) and its allocator "
        f"held {held_mib:.0f} MiB at peak; {more}, or lower hparams.batch_size (the space's batch_size "
        "choices) or model.max_size")


def _class_records(manifest: Manifest) -> list[dict[str, Any]]:
    return [{"label": c.label, "name": c.name, "dataset_id": c.dataset_id} for c in manifest.classes]


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
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    train_records, val_records = manifest.records("train"), manifest.records("val")
    if not train_records:
        raise DataError("the manifest's train split is empty")
    if not val_records:
        raise DataError("the manifest's val split is empty: set data.val_fraction > 0 or give a validation set")
    objective = parse_objective(cfg.metric, key="metric")
    check_measurable(objective, val_records, manifest.classes)

    device = resources.resolve_device()
    context_mib = 0.0
    if device.type == "cuda" and resources.gpu_memory_fraction is not None:
        context_mib = resources.gpu_context_mib if resources.gpu_context_mib is not None else measured_context_mib()
    _limit_gpu_memory(device, resources.gpu_memory_fraction, context_mib)
    amp_dtype = _amp_dtype(device, tr.amp)
    with _torch_threads(resources.cpus):
        _seed_everything(tr.seed)
        model = build_model(cfg.model, manifest.class_names)
        freeze = apply_freeze(model, architecture=cfg.model.architecture, depth=hp.freeze_depth)
        log.info("freeze depth %d: %d trainable, %d frozen parameters", freeze.depth, freeze.trainable_params, freeze.frozen_params)
        model.to(device)

        workers = _num_workers(tr.num_workers, resources.cpus, device)
        # decoded once, here, for every epoch (train first, then val, up to training.cache_mb)
        cache = DecodedImageCache(tr.cache_mb)
        fill = cache.fill(train_records + val_records, workers=workers)
        log.info("image cache: %d images (%.0f MiB) decoded in %.1f s, %d over budget, %d loader workers",
                 fill.images, fill.bytes / 2**20, fill.seconds, fill.skipped, workers)
        train_set = DetectionDataset(train_records, transforms=build_train_transforms(hp), cache=cache, seed=tr.seed)
        val_set = DetectionDataset(val_records, transforms=build_eval_transforms(), cache=cache)
        # SSDlite's BatchNorm layers on its 1x1 feature map cannot train on one image: a last batch
        # of one (a different image each epoch, by the shuffle) is left out
        lone_last = family_of(cfg.model.architecture) == "ssd" and len(train_set) % hp.batch_size == 1
        if lone_last:
            log.info("ssd: the last training batch of each epoch would hold 1 image; it is left out")
        train_loader = _loader(train_set, batch_size=hp.batch_size, shuffle=True, workers=workers,
                               seed=tr.seed, device=device, drop_last=lone_last)
        val_loader = _loader(val_set, batch_size=tr.eval_batch_size, shuffle=False, workers=workers,
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
            if not state.optimizer:
                raise TrainingError(f"{resume_dir}: the checkpoint of a finished trial holds its weights only "
                                    "(optimiser state removed to save disk); it cannot be resumed")
            if state.config != cfg.resolved():
                raise TrainingError(f"{resume_dir}: checkpoint was written with another config "
                                    f"({_config_difference(state.config, cfg.resolved())}); refusing to resume")
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            scaler.load_state_dict(state.scaler)
            restore_rng(state.rng)
            start_epoch, history = state.epoch, list(state.history)
            log.info("resumed from %s after epoch %d", resume_dir, start_epoch)

        # the architecture is a hyperparameter too when a sweep compares families
        hparams = {**hp.model_dump(mode="json"), "architecture": cfg.model.architecture}
        writer = TrialWriter(reporter.trial_dir, hparams=hparams, image_every=tr.image_log_every,
                             image_count=tr.image_log_count, class_names=manifest.class_names)
        metrics: dict[str, float] = {}
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, tr.epochs):
                train_loader.generator.manual_seed(tr.seed * 1_000_003 + epoch)
                train_set.set_epoch(epoch)  # workers start per epoch (not persistent) with this copy
                losses, lr, images_per_s, train_s = _train_one_epoch(
                    model, train_loader, optimizer, scheduler, scaler, epoch=epoch + 1, device=device,
                    amp_dtype=amp_dtype, grad_clip_norm=tr.grad_clip_norm,
                    loss_names=LOSS_NAMES[family_of(cfg.model.architecture)],
                )
                t0 = time.perf_counter()
                # fp32, as `boxtune predict` runs: the val numbers are the shipped model's numbers
                detections = predict(model, val_loader, device=device)
                coco, per_class = evaluate_detections_by_class(coco_gt, detections,
                                                               label_to_dataset_id=manifest.label_to_dataset_id)
                eval_s = time.perf_counter() - t0
                metrics = {
                    "epoch": epoch + 1,
                    **losses,
                    "lr": lr,  # used by the epoch's last step
                    "images_per_s": images_per_s,
                    "train_s": train_s,
                    "eval_s": eval_s,
                    **{k: float(coco[k]) for k in COCO_STAT_NAMES},
                    **class_metrics(per_class, manifest.classes, objective),
                    "trainable_params": freeze.trainable_params,
                    "cache_hit_rate": cache.hit_rate(train_records),  # share of the epoch's images not decoded again
                    **_gpu_memory(device),
                }
                history.append(metrics)
                metrics.update(epoch_summary(objective, metrics, history))  # score, best epoch by score
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
        except torch.cuda.OutOfMemoryError as err:
            if device.type != "cuda":
                raise
            # the same config in the same share runs out again: no retry can mend it
            raise gpu_out_of_memory(epoch + 1, fraction=resources.gpu_memory_fraction,
                                    card_mib=torch.cuda.get_device_properties(device).total_memory / 2**20,
                                    held_mib=_gpu_memory(device)["gpu_reserved_mib"], context_mib=context_mib) from err
        finally:
            writer.close()
    return metrics


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
