"""A sweep from its config to its ranking, as Python calls: ``run_sweep`` and ``resume_sweep``.

Each launches the trials (``tune.launch``), then finishes the sweep (``tune.results.finish``: the
test split, the HParams experiment, ``ranking.parquet``). ``boxtune sweep``, ``boxtune resume``
and ``boxtune demo`` call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.config import SweepConfig
from tune.launch.sweep import continue_sweep, launch_sweep
from tune.results.finish import finish_sweep
from tune.run.view import SweepView

__all__ = ["SweepResult", "sweep", "resume", "run_sweep", "resume_sweep"]


@dataclass
class SweepResult:
    view: SweepView  # the finished sweep folder, loaded once
    rows: list[dict[str, Any]]  # its ranking, best first


def sweep(cfg: SweepConfig, *, address: str | None = None, echo=print) -> SweepResult:
    """Run a whole sweep; return its view and ranking."""
    folder, manifest = launch_sweep(cfg, address=address, echo=echo)
    return SweepResult(*finish_sweep(folder.uri, manifest, echo=echo))


def resume(run: str, *, address: str | None = None, echo=print) -> SweepResult:
    """Continue an interrupted sweep, then finish it; return its view and ranking."""
    folder, manifest = continue_sweep(run, address=address, echo=echo)
    return SweepResult(*finish_sweep(folder.uri, manifest, echo=echo))


def run_sweep(cfg: SweepConfig, *, address: str | None = None, echo=print) -> list[dict[str, Any]]:
    """Run a whole sweep; return the ranking rows (best first)."""
    return sweep(cfg, address=address, echo=echo).rows


def resume_sweep(run: str, *, address: str | None = None, echo=print) -> list[dict[str, Any]]:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from their checkpoint."""
    return resume(run, address=address, echo=echo).rows
