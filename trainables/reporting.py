"""Where a trial's per-epoch results go: a local folder, or Ray Tune (see ``ray_reporter``).

The trial loop talks only to a ``Reporter``, so the same function runs as ``boxtune train`` and
inside a Tune trial.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from trainables.atomic import atomic_write_text
from trainables.files import BEST_FILE, CHECKPOINT_FILE, CHECKPOINTS_DIR, METRICS_FILE, epoch_checkpoint_dir
from trainables.objective import best_epoch

__all__ = ["Reporter", "LocalReporter", "format_epoch_line", "format_best_summary", "sort_score", "hparam_value"]


@runtime_checkable
class Reporter(Protocol):
    """What the trial loop needs from its host."""

    @property
    def trial_dir(self) -> Path:
        """A local folder for the trial's own files (TensorBoard events)."""

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint directory to resume from, or None for a fresh start."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        """Record one epoch's metrics and persist its checkpoint directory (which may be deleted after)."""


def _fmt(value: float) -> str:
    return "  nan" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"


# short names of the loss parts in the epoch line, for every family (see trainables.loop.LOSS_NAMES)
_LOSS_SHORT = {
    "loss_classifier": "cls", "loss_box_reg": "box", "loss_objectness": "obj", "loss_rpn_box_reg": "rpn",
    "loss_classification": "cls", "loss_bbox_regression": "box", "loss_bbox_ctrness": "ctr",
}


def format_epoch_line(metrics: dict[str, float]) -> str:
    """One line per epoch: losses (the total, then the family's parts), AP/AR, learning rate and throughput."""
    parts = " ".join(f"{short} {metrics[key]:.4f}" for key, short in _LOSS_SHORT.items() if key in metrics)
    return (
        f"epoch {int(metrics['epoch']):3d}  loss {metrics['loss']:.4f} ({parts})  "
        f"AP {_fmt(metrics['AP'])} AP50 {_fmt(metrics['AP50'])} AP75 {_fmt(metrics['AP75'])} "
        f"AR100 {_fmt(metrics['AR100'])}  lr {metrics['lr']:.2e}  {metrics['images_per_s']:.1f} img/s"
    )


class LocalReporter:
    """Writes checkpoints and metrics under ``out_dir`` for a trial run as a plain process.

    Layout: ``metrics.jsonl`` (one JSON object per epoch), ``checkpoints/epoch_NNNN/`` (the last
    epoch and the best by ``score`` are kept; see ``trainables.objective``), ``best -> checkpoints/epoch_NNNN`` recorded in ``best.json``.
    """

    def __init__(self, out_dir: str | Path, *, echo: Callable[[str], None] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._ckpt_root = self.out_dir / CHECKPOINTS_DIR
        self._echo = echo

    @property
    def trial_dir(self) -> Path:
        return self.out_dir

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self._ckpt_root.glob("epoch_*") if (p / CHECKPOINT_FILE).is_file())
        return done[-1] if done else None

    def history(self) -> list[dict[str, float]]:
        path = self.out_dir / METRICS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        epoch = int(metrics["epoch"])
        target = self.out_dir / epoch_checkpoint_dir(epoch)
        if target.exists():
            shutil.rmtree(target)
        self._ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint_dir, target)
        # metrics of epochs after this one belong to a run that is being replaced by a resume
        kept = [m for m in self.history() if int(m["epoch"]) < epoch] + [dict(metrics)]
        atomic_write_text(self.out_dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in kept))
        best = best_epoch(kept)  # by the reported score: the objective, then AR100
        atomic_write_text(self.out_dir / BEST_FILE, json.dumps({"epoch": int(best["epoch"]), "metrics": best}, indent=2))
        keep = {target.name, Path(epoch_checkpoint_dir(best["epoch"])).name}
        for old in self._ckpt_root.glob("epoch_*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        if self._echo is not None:
            self._echo(format_epoch_line(metrics))


def format_best_summary(out_dir: str | Path, *, epochs: int | None = None) -> str:
    """The end of ``boxtune train``: the best epoch, its 12 COCO numbers (val split) and its checkpoint."""
    out_dir = Path(out_dir)
    best = json.loads((out_dir / BEST_FILE).read_text())
    epoch, metrics = int(best["epoch"]), best["metrics"]
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    of = f" of {epochs}" if epochs else ""
    lines = [f"best epoch {epoch}{of} (val split; NaN: no object of that size)"]
    for row in (names[:6], names[6:]):
        lines.append("  " + " ".join(f"{k:>6}" for k in row))
        lines.append("  " + " ".join(f"{_fmt(float(metrics.get(k, float('nan')))):>6}" for k in row))
    lines.append(f"checkpoint: {out_dir / epoch_checkpoint_dir(epoch)}")
    return "\n".join(lines)


def hparam_value(value: Any) -> Any:
    """A hyperparameter as TensorBoard's HParams take it: bool, number or string (a list becomes its text)."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def sort_score(value) -> float:
    """A metric as a sort key: NaN, None and non-numbers sort below every real value (AP is >= 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return -1.0
    return -1.0 if math.isnan(v) else v
