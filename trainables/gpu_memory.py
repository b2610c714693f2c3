"""A trial's GPU memory: the estimate the packing preflight uses, and the cap and peak a trial runs with.

A trial's peak GPU memory (what its CUDA allocator holds, ``gpu_reserved_mib``) grows with the
pixels it trains on at once. For each architecture and precision, ``benchmarks/gpu.sh`` (its
``memory`` part) measures training steps at three batch and image sizes, with every layer
training (freeze depth 0) and SGD with momentum, and ``fit_table`` fits

    peak MiB = base_mib + per_image_mpx_mib * batch_size * canvas megapixels

by least squares. The canvas is the tensor the model batches: each image resized (the short
side to ``min_size``, the long side at most ``max_size``), then every image of the batch padded
to the largest height and the largest width, rounded up to 32 (``canvas_megapixels``). A batch
that mixes portrait and landscape images can reach ``max_size`` x ``max_size``, and crops of any
shape (``crop_p``) are counted at that bound; a dataset of one orientation stays near
``min_size`` x ``max_size``. SSDlite's canvas is a fixed 320 x 320.

Two more terms are added exactly rather than fitted:

- the batch as the loader delivers it, float32 at the image's own size (the model resizes it on
  the GPU): a batch of 12-megapixel photos is over 1 GiB before the model sees it, and zoom-out
  (``zoom_out_p``) enlarges it by up to ``zoom_out_max`` squared;
- Adam's and AdamW's second fp32 state per trained parameter, beyond SGD's momentum.

Freezing only lowers the peak, so for a frozen trial the estimate is an upper bound.

The fit is kept in ``gpu_memory.json`` beside this module, with the card, the versions and the
CUDA context size it was measured with (``load_table``; ``BOXTUNE_GPU_MEMORY_TABLE`` names
another file, such as a table measured on your own card). Without a table there is no estimate
and the preflight says so.

A running trial holds its allocator to its share of the card (``limit_gpu_memory``), reports its
peak (``peak_gpu_memory``), and when it outgrows the share fails with ``gpu_out_of_memory``'s
error (``OutOfMemoryGuard``), which says how much it had and what shrinks it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from trainables.architectures import FAMILIES
from trainables.config import TrialConfig
from trainables.errors import ConfigError, OutOfMemoryError

__all__ = ["TABLE_FILE", "TABLE_ENV", "canvas_megapixels", "fit_table", "load_table", "estimate_mib",
           "measured_context_mib", "share_limit_mib", "limit_gpu_memory", "peak_gpu_memory", "gpu_out_of_memory", "OutOfMemoryGuard"]

TABLE_FILE = Path(__file__).with_name("gpu_memory.json")
TABLE_ENV = "BOXTUNE_GPU_MEMORY_TABLE"  # a table file to use instead
_SSD_SIDE = 320  # SSDlite resizes every image to 320 x 320, whatever min_size/max_size say
_STATE_BYTES = 4  # one fp32 optimiser state per trained parameter
_PIXEL_BYTES = 3 * 4  # a float32 RGB pixel, as the loader hands the batch over
_DIVISIBLE = 32  # torchvision's GeneralizedRCNNTransform pads each batch to a multiple of 32


def _ceil32(x: float) -> int:
    return int(math.ceil(x / _DIVISIBLE) * _DIVISIBLE)


def canvas_megapixels(architecture: str, min_size: int, max_size: int,
                      sizes: Sequence[tuple[int, int]] | None = None) -> float:
    """The largest canvas, in megapixels, a batch of these images can be padded to.

    ``sizes`` are the images' (height, width). Without them (or for crops of any shape) the bound
    is ``max_size`` x ``max_size``: a batch mixing orientations. SSDlite's canvas is fixed.
    """
    if FAMILIES[architecture] == "ssd":
        return _SSD_SIDE * _SSD_SIDE / 1e6
    if not sizes:
        return _ceil32(max_size) ** 2 / 1e6
    tallest = widest = 0
    for h, w in sizes:
        scale = min(min_size / min(h, w), max_size / max(h, w))  # GeneralizedRCNNTransform's resize
        tallest, widest = max(tallest, math.floor(h * scale)), max(widest, math.floor(w * scale))
    return _ceil32(tallest) * _ceil32(widest) / 1e6


def fit_table(rows: Iterable[Mapping[str, Any]], *, card: str, context_mib: float | None,
              versions: Mapping[str, str]) -> dict[str, Any]:
    """The table ``estimate_mib`` reads, fitted from measured rows.

    Each row: ``arch``, ``precision`` ("amp" or "fp32"), ``batch``, ``megapixels`` (per image),
    ``reserved_mib`` (the allocator's peak) and ``trainable_params``. An (arch, precision) pair
    needs rows at two or more batch sizes; ``max_residual_mib`` says how far the line misses
    the worst of them.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["arch"], row["precision"]), []).append(row)
    architectures: dict[str, Any] = {}
    for (arch, precision), group in sorted(groups.items()):
        xs = [r["batch"] * r["megapixels"] for r in group]  # megapixels in one step
        ys = [float(r["reserved_mib"]) for r in group]
        if len(set(xs)) < 2:
            continue
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        base = my - slope * mx
        entry = architectures.setdefault(arch, {"trainable_params": int(group[0]["trainable_params"])})
        entry[precision] = {
            "base_mib": round(base, 1),
            "per_image_mpx_mib": round(slope, 1),
            "max_residual_mib": round(max(abs(y - (base + slope * x)) for x, y in zip(xs, ys, strict=True)), 1),
            "measured": [[r["batch"], r["megapixels"], r["reserved_mib"]] for r in group],
        }
    return {"card": card, "cuda_context_mib": context_mib, "versions": dict(versions),
            "method": "peak reserved MiB of training steps at freeze depth 0, SGD with momentum, "
                      "full-size images; least squares over batch_size * megapixels",
            "architectures": architectures}


def load_table(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The measured table, or None when none has been measured.

    From ``path``, else the file ``BOXTUNE_GPU_MEMORY_TABLE`` names (a table measured on your own
    card: ``bash benchmarks/gpu.sh --parts memory`` writes it), else ``TABLE_FILE``.
    """
    named = os.environ.get(TABLE_ENV)
    if path is None and named:
        if not Path(named).expanduser().is_file():
            raise ConfigError(f"{TABLE_ENV}={named}: no such file")
        path = Path(named).expanduser()
    path = Path(path) if path is not None else TABLE_FILE
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a GPU memory table (not JSON: {err})") from None
    if not isinstance(table, dict) or not isinstance(table.get("architectures"), dict):
        raise ConfigError(f"{path}: not a GPU memory table (no 'architectures' mapping); rewrite it with benchmarks/gpu.sh")
    for arch, entry in table["architectures"].items():
        if not _entry_ok(entry):
            raise ConfigError(f"{path}: architectures.{arch}: expected trainable_params and amp/fp32 fits with "
                              "base_mib and per_image_mpx_mib; rewrite it with benchmarks/gpu.sh")
    return {**table, "path": str(path.resolve())}


def _entry_ok(entry: Any) -> bool:
    """One architecture's entry as ``fit_table`` writes it: its parameter count and at least one fit."""
    if not isinstance(entry, dict) or not isinstance(entry.get("trainable_params"), int):
        return False
    fits = [entry[p] for p in ("amp", "fp32") if p in entry]
    return bool(fits) and all(
        isinstance(f, dict) and all(isinstance(f.get(k), (int, float)) for k in ("base_mib", "per_image_mpx_mib"))
        for f in fits)


def estimate_mib(config: TrialConfig, table: Mapping[str, Any], *,
                 sizes: Sequence[tuple[int, int]] | None = None) -> float | None:
    """A trial's peak GPU memory in MiB by the measured ``table``; None when it has no fit for the config.

    ``sizes`` are the training images' (height, width), as the manifest records them; without
    them the canvas is the mixed-orientation bound and the delivered batch is not counted. The
    config's precision is ``training.amp`` (on a GPU: bf16 or fp16, both 2 bytes).
    """
    model, hp = config.model, config.hparams
    entry = table["architectures"].get(model.architecture)
    fit = None if entry is None else entry.get("amp" if config.training.amp else "fp32")
    if fit is None:
        return None
    any_shape = hp.crop_p > 0 or not sizes  # crops reach every aspect ratio
    canvas = canvas_megapixels(model.architecture, model.min_size, model.max_size, None if any_shape else sizes)
    delivered = 0.0
    if sizes:
        largest = max(h * w for h, w in sizes) * (hp.zoom_out_max ** 2 if hp.zoom_out_p > 0 else 1.0)
        delivered = hp.batch_size * largest * _PIXEL_BYTES / 2**20
    extra_state = entry["trainable_params"] * _STATE_BYTES / 2**20 if hp.optimizer in ("adam", "adamw") else 0.0
    return fit["base_mib"] + fit["per_image_mpx_mib"] * hp.batch_size * canvas + delivered + extra_state


def measured_context_mib(table: Mapping[str, Any] | None = None) -> float:
    """The CUDA context size the table was measured with, MiB; 0 without a table (``load_table()``'s by default)."""
    table = load_table() if table is None else table
    return float((table or {}).get("cuda_context_mib") or 0.0)


def share_limit_mib(fraction: float, card_mib: float, context_mib: float) -> float:
    """What a trial's allocator may hold of its ``fraction`` of a card: the share less one CUDA context.

    The context lives outside the allocator, so trials packed at ``1 / n`` each fill the card
    together, contexts included, only if each allocator stops one context short of its share.
    The trial's cap (``limit_gpu_memory``) and the sweep's preflight (``tune.launch.gpu_preflight``) both
    use this. Never below 5% of the share.
    """
    return max(fraction * card_mib - context_mib, 0.05 * fraction * card_mib)


def limit_gpu_memory(device: torch.device, fraction: float | None, context_mib: float) -> None:
    """Hold this process's CUDA allocator to ``fraction`` of the card less its context; start its peak count afresh."""
    if device.type != "cuda":
        return
    if fraction is not None:
        card_mib = torch.cuda.get_device_properties(device).total_memory / 2**20
        torch.cuda.set_per_process_memory_fraction(share_limit_mib(fraction, card_mib, context_mib) / card_mib, device)
    torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_memory(device: torch.device) -> dict[str, float]:
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
    (``share_limit_mib``) and ``held_mib`` the most its allocator held.
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


class OutOfMemoryGuard(contextlib.AbstractContextManager):
    """Turns CUDA running out of memory inside it into ``gpu_out_of_memory``'s error for ``epoch``.

    ``epoch`` (1-based) is the trial loop's to keep current. The same config in the same share
    runs out again: no retry can mend it, so the error says how much the trial had and what
    shrinks it. Off the GPU every error passes through as it is.
    """

    def __init__(self, device: torch.device, fraction: float | None, context_mib: float, *, epoch: int) -> None:
        self.device, self.fraction, self.context_mib, self.epoch = device, fraction, context_mib, epoch

    def __exit__(self, kind, err, traceback) -> None:
        if isinstance(err, torch.cuda.OutOfMemoryError) and self.device.type == "cuda":
            raise gpu_out_of_memory(self.epoch, fraction=self.fraction,
                                    card_mib=torch.cuda.get_device_properties(self.device).total_memory / 2**20,
                                    held_mib=peak_gpu_memory(self.device)["gpu_reserved_mib"],
                                    context_mib=self.context_mib) from err
