"""Trial checkpoints: everything needed to continue a trial exactly, in one ``torch.save`` file.

A checkpoint directory holds ``checkpoint.pt``: model, optimiser, scheduler and grad-scaler
states, the number of completed epochs, the RNG states (Python, NumPy, torch, CUDA), the resolved
trial config, the epoch's metrics and the class list. Every value is a tensor, a number, a string
or a container of those, so it loads with ``torch.load(weights_only=True)``: a checkpoint cannot
carry code.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.atomic import atomic_path
from trainables.errors import TrainingError
from trainables.files import CHECKPOINT_FILE

__all__ = ["CHECKPOINT_FILE", "FORMAT_VERSION", "TrialState", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng"]

FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Every RNG a trial draws from, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrialState:
    """What a checkpoint restores."""

    epoch: int  # completed epochs
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, float]
    classes: list[dict[str, Any]]
    architecture: str
    model_kwargs: dict[str, Any]
    history: list[dict[str, float]]


def save_checkpoint(directory: str | os.PathLike, state: TrialState) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically; return the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state.__dict__}
    with atomic_path(directory / CHECKPOINT_FILE) as tmp:
        torch.save(payload, tmp)
    return directory / CHECKPOINT_FILE


def load_checkpoint(path: str | os.PathLike) -> TrialState:
    """Read a checkpoint file or directory; a file that is not a boxtune checkpoint is a TrainingError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises many kinds
        raise TrainingError(f"{path}: not a loadable boxtune checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise TrainingError(f"{path}: not a boxtune trial checkpoint (format_version {payload.get('format_version') if isinstance(payload, dict) else None!r})")
    fields = TrialState.__dataclass_fields__
    missing = [k for k in fields if k not in payload]
    if missing:
        raise TrainingError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return TrialState(**{k: payload[k] for k in fields})
