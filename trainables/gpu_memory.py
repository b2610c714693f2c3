"""How much GPU memory a trial needs, from measurements on a card: the estimate the packing preflight uses.

A trial's peak GPU memory (what its CUDA allocator holds, ``gpu_reserved_mib``) grows with the
pixels it trains on at once. For each architecture and precision, ``benchmarks/gpu.sh`` (its
``memory`` part) measures training steps at two or more batch sizes, with every layer training
(freeze depth 0) and SGD with momentum, and ``fit_table`` fits

    peak MiB = base_mib + per_image_mpx_mib * batch_size * megapixels per image

by least squares. Megapixels per image is the most the model's resize can give:
``min_size * max_size`` (an image whose long side reaches ``max_size``), or SSDlite's fixed
320 x 320. Adam and AdamW keep one more fp32 state per trained parameter than SGD's momentum,
added exactly. Freezing only lowers the peak, so for a frozen trial the estimate is an upper
bound.

The fit is kept in ``gpu_memory.json`` beside this module, with the card, the versions and the
CUDA context size it was measured with (``load_table``; ``BOXTUNE_GPU_MEMORY_TABLE`` names
another file, such as a table measured on your own card). Without a table there is no estimate
and the preflight says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trainables.config import FAMILIES, TrialConfig
from trainables.errors import ConfigError

__all__ = ["TABLE_FILE", "TABLE_ENV", "image_megapixels", "fit_table", "load_table", "estimate_mib",
           "measured_context_mib", "share_limit_mib"]

TABLE_FILE = Path(__file__).with_name("gpu_memory.json")
TABLE_ENV = "BOXTUNE_GPU_MEMORY_TABLE"  # a table file to use instead
_SSD_SIDE = 320  # SSDlite resizes every image to 320 x 320, whatever min_size/max_size say
_STATE_BYTES = 4  # one fp32 optimiser state per trained parameter


def image_megapixels(architecture: str, min_size: int, max_size: int) -> float:
    """The largest area, in megapixels, the model's resize can give one image."""
    if FAMILIES[architecture] == "ssd":
        return _SSD_SIDE * _SSD_SIDE / 1e6
    return min_size * max_size / 1e6


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
    return table


def estimate_mib(config: TrialConfig, table: Mapping[str, Any]) -> float | None:
    """A trial's peak GPU memory in MiB by the measured ``table``; None when it has no entry for the config.

    The config's precision is ``training.amp`` (on a GPU: bf16 or fp16, both 2 bytes); the
    optimiser adds Adam's second state over the measured SGD momentum.
    """
    model, hp = config.model, config.hparams
    entry = table["architectures"].get(model.architecture)
    if entry is None:
        return None
    fit = entry.get("amp" if config.training.amp else "fp32")
    if fit is None:
        return None
    pixels = hp.batch_size * image_megapixels(model.architecture, model.min_size, model.max_size)
    extra_state = entry["trainable_params"] * _STATE_BYTES / 2**20 if hp.optimizer in ("adam", "adamw") else 0.0
    return fit["base_mib"] + fit["per_image_mpx_mib"] * pixels + extra_state


def measured_context_mib(table: Mapping[str, Any] | None = None) -> float:
    """The CUDA context size the table was measured with, MiB; 0 without a table (``load_table()``'s by default)."""
    table = load_table() if table is None else table
    return float((table or {}).get("cuda_context_mib") or 0.0)


def share_limit_mib(fraction: float, card_mib: float, context_mib: float) -> float:
    """What a trial's allocator may hold of its ``fraction`` of a card: the share less one CUDA context.

    The context lives outside the allocator, so trials packed at ``1 / n`` each fill the card
    together, contexts included, only if each allocator stops one context short of its share.
    The trial's cap (``trainables.loop``) and the sweep's preflight (``tune.gpu_preflight``) both
    use this. Never below 5% of the share.
    """
    return max(fraction * card_mib - context_mib, 0.05 * fraction * card_mib)
