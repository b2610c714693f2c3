"""Before any GPU trial starts: does the trial's share of a card hold what the space can draw?

``resources.gpu`` is a share of one card (``0.25``: four trials on it, each held to a quarter of
its memory; see ``tune.trainable``), so a config that needs more than its share stops with an
out-of-memory error. This check reads the memory of the cluster's GPU cards (``nvidia-smi`` on
each node with enough GPU, through a Ray task that takes no resources) and estimates every config
the space check drew (``trainables.gpu_memory``, measured on a card by ``benchmarks/gpu.sh``):

- if even the smallest needs more than the share, the sweep stops with a ConfigError;
- if some do, it says which, since those trials will fail;
- if there is no measured estimate for the architecture, or no card memory could be read, it says
  that nothing was checked.

Each trial's CUDA context lives outside its allocator's share, so the share compared is
``resources.gpu`` of the card less one context.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trainables.config import FAMILIES, TrialConfig
from trainables.errors import ConfigError
from trainables.gpu_memory import estimate_mib, load_table, measured_context_mib, share_limit_mib

__all__ = ["parse_nvidia_smi", "card_memory_mib", "check_gpu_memory", "gpu_memory_preflight"]

_QUERY = ["--query-gpu=memory.total", "--format=csv,noheader,nounits"]


def parse_nvidia_smi(text: str) -> list[float]:
    """Card memory in MiB, one per line of ``nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits``.

    Lines that are not a number (``[N/A]`` on MIG setups) are left out.
    """
    cards = []
    for line in text.splitlines():
        try:
            cards.append(float(line.strip()))
        except ValueError:
            continue
    return cards


def _local_cards() -> list[float]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, *_QUERY], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


def card_memory_mib(gpu: float, *, timeout_s: float = 60.0) -> list[float]:
    """The memory of every card on the alive nodes that have ``gpu`` (at most 1) GPUs, MiB; [] when unreadable.

    One zero-resource task per node runs ``nvidia-smi`` there, so nothing waits for a free GPU.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_local_cards)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) >= min(gpu, 1)]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes]
    try:
        return [mib for cards in ray.get(refs, timeout=timeout_s) for mib in cards]
    except ray.exceptions.RayError:  # timed out, or a node went away: unknown, and the check says so
        return []


def _describe(cfg: TrialConfig) -> str:
    m = cfg.model
    size = "320x320" if FAMILIES[m.architecture] == "ssd" else f"{m.min_size}x{m.max_size}"  # SSDlite's is fixed
    return (f"{m.architecture}, batch_size {cfg.hparams.batch_size}, {size}, "
            f"{'amp' if cfg.training.amp else 'fp32'}, {cfg.hparams.optimizer}")


def check_gpu_memory(configs: Iterable[Mapping[str, Any]], *, gpu: float, card_mib: float | None,
                     table: Mapping[str, Any] | None, echo: Callable[[str], None] = print) -> None:
    """Compare each config's estimate with the trial's share of the smallest card; raise if none fits.

    ``configs`` are merged trial configs (what the space check drew), ``card_mib`` the smallest
    card's memory (None: unknown), ``table`` the measured estimates (None: none measured).
    """
    trials = [TrialConfig.model_validate(c) for c in configs]
    if table is None:
        echo("GPU memory: not checked (no measured estimate: benchmarks/gpu.sh writes trainables/gpu_memory.json)")
        return
    if card_mib is None:
        echo("GPU memory: not checked (no GPU node's card memory could be read with nvidia-smi)")
        return
    context = measured_context_mib(table)
    share = share_limit_mib(min(gpu, 1.0), card_mib, context)  # what the trial's allocator is held to
    where = (f"resources.gpu {gpu:g} of a {card_mib:.0f} MiB card, less {context:.0f} MiB for the CUDA context; "
             f"estimates measured on {table.get('card', 'an unnamed card')}")
    estimated = [(e, t) for t in trials if (e := estimate_mib(t, table)) is not None]
    missing = sorted({t.model.architecture for t in trials if estimate_mib(t, table) is None})
    if missing:
        echo(f"GPU memory: no measured estimate for {', '.join(missing)}; those trials are not checked")
    if not estimated:
        return
    estimated.sort(key=lambda pair: pair[0])
    (low, smallest), (high, largest) = estimated[0], estimated[-1]
    if low > share:
        raise ConfigError(
            f"resources.gpu: a trial may hold {share:.0f} MiB ({where}), but the smallest config the space can draw "
            f"needs about {low:.0f} MiB ({_describe(smallest)}). "
            f"{'Raise resources.gpu (fewer trials per GPU)' if gpu < 1 else 'Use GPUs with more memory'}, or "
            "lower the space's batch_size or model.max_size (BOXTUNE_SKIP_PREFLIGHT=1 skips this check).")
    over = [(e, t) for e, t in estimated if e > share]
    if over:
        echo(f"GPU memory: {len(over)} of {len(estimated)} checked configs need more than a trial's {share:.0f} MiB "
             f"({where}), up to about {high:.0f} MiB ({_describe(largest)}); such trials will stop with an "
             "out-of-memory error")
    else:
        echo(f"GPU memory: about {low:.0f} to {high:.0f} MiB per trial, within its {share:.0f} MiB ({where})")


def gpu_memory_preflight(configs: Iterable[Mapping[str, Any]], *, gpu: float, echo: Callable[[str], None] = print,
                         table_path: str | os.PathLike | None = None) -> None:
    """``check_gpu_memory`` against the cluster's smallest card and the measured table (a GPU sweep only).

    ``table_path`` replaces ``trainables/gpu_memory.json`` (``trainables.gpu_memory.TABLE_FILE``).
    """
    if gpu <= 0 or os.environ.get("BOXTUNE_SKIP_PREFLIGHT") == "1":
        return
    table = load_table(table_path)
    cards = card_memory_mib(gpu) if table is not None else []
    check_gpu_memory(configs, gpu=gpu, card_mib=min(cards) if cards else None, table=table, echo=echo)
