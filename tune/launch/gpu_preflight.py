"""Before any GPU trial starts: does the trial's share of a card hold what the space can draw?

``resources.gpu`` is a share of one card (``0.25``: four trials on it, each held to a quarter of
its memory; see ``tune.launch.trainable``), so a config that needs more than its share stops with an
out-of-memory error. This check reads the memory of the cluster's GPU cards (``nvidia-smi`` on
each node with enough GPU, through a Ray task that takes no resources) and estimates every config
the space check drew (``trainables.gpu_memory``, measured on a card by ``benchmarks/gpu.sh``):

- if even the smallest needs more than the share of the largest card, the sweep stops with a
  ConfigError;
- if some need more than the share of the smallest card, it says how many, since those trials
  will fail (there, at least);
- if there is no measured estimate for the architecture, or no card memory could be read, it says
  that nothing was checked.

Each trial's CUDA context lives outside its allocator's share, so the share compared is
``resources.gpu`` of the card less one context, which is what a packed trial's allocator is held
to (``trainables.gpu_memory.share_limit_mib``). The estimate takes the training images' sizes
from the manifest: the canvas a batch is padded to, and the batch as the loader delivers it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from trainables.architectures import FAMILIES
from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.gpu_memory import estimate_mib, load_table, measured_context_mib, share_limit_mib

__all__ = ["parse_nvidia_smi", "card_memory_mib", "check_gpu_memory", "gpu_memory_preflight"]

_QUERIES = (["--query-gpu=memory.total,memory.reserved", "--format=csv,noheader,nounits"],
            ["--query-gpu=memory.total", "--format=csv,noheader,nounits"])  # older drivers lack memory.reserved


def parse_nvidia_smi(text: str) -> list[float]:
    """Usable memory per card in MiB from ``nvidia-smi --query-gpu=memory.total[,memory.reserved]``.

    The driver's reserved memory is taken off the total, which leaves what CUDA reports as the
    card's memory (what a trial's share is a fraction of). Lines that are not numbers (``[N/A]``
    on MIG setups) are left out.
    """
    cards = []
    for line in text.splitlines():
        try:
            fields = [float(f) for f in line.split(",")]
        except ValueError:
            continue
        if fields:
            cards.append(fields[0] - (fields[1] if len(fields) > 1 else 0.0))
    return cards


def _local_cards() -> list[float]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    for query in _QUERIES:
        try:
            out = subprocess.run([exe, *query], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if out.returncode == 0:
            return parse_nvidia_smi(out.stdout)
    return []


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


def _where(gpu: float, card_mib: float, context: float, table: Mapping[str, Any]) -> str:
    return (f"resources.gpu {gpu:g} of a {card_mib:.0f} MiB card, less {context:.0f} MiB for the CUDA context; "
            f"estimates measured on {table.get('card', 'an unnamed card')}")


def check_gpu_memory(configs: Iterable[Mapping[str, Any]], *, gpu: float, cards_mib: Sequence[float],
                     table: Mapping[str, Any] | None, sizes: Sequence[tuple[int, int]] | None = None,
                     echo: Callable[[str], None] = print) -> None:
    """Compare each config's estimate with a trial's share of the cards; raise if none fits on any.

    ``configs`` are merged trial configs (what the space check drew), ``cards_mib`` the GPU
    nodes' cards (empty: unknown), ``table`` the measured estimates (None: none measured) and
    ``sizes`` the training images' (height, width).
    """
    if table is None:
        echo("GPU memory: not checked (no measured estimate: benchmarks/gpu.sh writes trainables/gpu_memory.json)")
        return
    if not cards_mib:
        echo("GPU memory: not checked (no GPU node's card memory could be read with nvidia-smi)")
        return
    trials = [TrialConfig.model_validate(c) for c in configs]
    context = measured_context_mib(table)
    small, large = min(cards_mib), max(cards_mib)
    share, share_large = (share_limit_mib(min(gpu, 1.0), card, context) for card in (small, large))
    pairs = [(estimate_mib(t, table, sizes=sizes), t) for t in trials]
    missing = sorted({f"{t.model.architecture} ({'amp' if t.training.amp else 'fp32'})" for e, t in pairs if e is None})
    if missing:
        echo(f"GPU memory: no measured estimate for {', '.join(missing)}; those trials are not checked")
    estimated = sorted(((e, t) for e, t in pairs if e is not None), key=lambda pair: pair[0])
    if not estimated:
        return
    (low, smallest), (high, largest) = estimated[0], estimated[-1]
    if low > share_large:
        raise ConfigError(
            f"resources.gpu: a trial may hold {share_large:.0f} MiB ({_where(gpu, large, context, table)}), but the "
            f"smallest config the space can draw needs about {low:.0f} MiB ({_describe(smallest)}). "
            f"{'Raise resources.gpu (fewer trials per GPU)' if gpu < 1 else 'Use GPUs with more memory'}, or "
            "lower the space's batch_size or model.max_size (BOXTUNE_SKIP_PREFLIGHT=1 skips this check).")
    over = [e for e, _ in estimated if e > share]
    on = f" on the smallest of the cards ({len(cards_mib)} seen)" if large > small else ""
    if over:
        echo(f"GPU memory: {len(over)} of {len(estimated)} checked configs need more than a trial's {share:.0f} MiB"
             f"{on} ({_where(gpu, small, context, table)}), up to about {high:.0f} MiB ({_describe(largest)}); "
             "such trials will stop with an out-of-memory error")
    else:
        echo(f"GPU memory: about {low:.0f} to {high:.0f} MiB per trial, within its {share:.0f} MiB "
             f"({_where(gpu, small, context, table)})")


def gpu_memory_preflight(configs: Iterable[Mapping[str, Any]], *, gpu: float, echo: Callable[[str], None] = print,
                         table: Mapping[str, Any] | None = None, sizes: Sequence[tuple[int, int]] | None = None) -> None:
    """``check_gpu_memory`` against the cluster's cards and ``table`` (a GPU sweep only; ``load_table()``'s
    if None)."""
    if gpu <= 0 or os.environ.get("BOXTUNE_SKIP_PREFLIGHT") == "1":
        return
    table = load_table() if table is None else table
    cards = card_memory_mib(gpu) if table is not None else []
    check_gpu_memory(configs, gpu=gpu, cards_mib=cards, table=table, sizes=sizes, echo=echo)
