"""``boxtune report`` on a ``boxtune train`` folder: its epochs, and its best epoch as an export ships it.

A train run has one config, so there is nothing to rank: the report lists the epochs (losses, the
COCO numbers, the learning rate) and the best one by the run's objective, with its 95% interval
over bootstrap resamples of the val images and, where the run had a test split, its test numbers
(``tune.run.train_run``). A number that was not measured shows ``-``, as in a sweep's report.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from trainables.atomic import strict_json
from tune.run.train_run import TrainBest, train_best

__all__ = ["EPOCH_COLUMNS", "format_train_report"]

# the epoch table's columns: the loss, the objective's usual parts, the schedule and the speed
EPOCH_COLUMNS = ("epoch", "loss", "AP", "AP50", "AR100", "lr", "images_per_s")
NOT_MEASURED = "-"


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED
    if key == "epoch":
        return str(int(value))
    if key == "lr":
        return f"{float(value):.3g}"
    if key == "images_per_s":
        return f"{float(value):.1f}"
    return f"{float(value):.4f}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [[_cell(r.get(k), k) for k in EPOCH_COLUMNS] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(EPOCH_COLUMNS)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(EPOCH_COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    return lines


def _best_lines(best: TrainBest) -> list[str]:
    line = f"best epoch {best.epoch} of {best.epochs} by {best.objective} on val: {_cell(best.value, best.objective)}"
    if not math.isnan(best.ci_low):
        line += f" (95% interval {best.ci_low:.3f}..{best.ci_high:.3f} over {best.resamples:,} resamples of {best.val_images} val images)"
    else:
        line += " (no interval: the epoch's detections or the run's manifest are not stored)"
    line += f", AR100 {_cell(best.metrics.get('AR100'), 'AR100')}"
    if best.test is None:
        test = f"test split: {NOT_MEASURED} (none, or not evaluated at this epoch): val numbers are optimistic, " \
               "the best of the epochs run"
    else:
        m = best.test["metrics"]
        test = f"test split ({best.test['images']} images), epoch {best.epoch}: " + "  ".join(
            f"test_{k} {_cell(m.get(k), k)}" for k in ("AP", "AP50", "AR100"))
    threads = f"torch threads: {best.threads} (AP depends on the count)" if best.threads is not None else \
        f"torch threads: {NOT_MEASURED} (not recorded by this run)"
    return [line, test, threads, f"checkpoint: {best.folder.checkpoint_dir(best.epoch)}"]


def format_train_report(run: str, *, fmt: str = "table") -> str | bytes:
    """Train folder ``run`` as ``table`` (epochs, then the best), ``csv`` (the epochs), ``json``
    (epochs, best, interval, test) or ``parquet`` (the epochs, as bytes)."""
    best = train_best(run)
    history = best.folder.history()
    if fmt == "csv":
        keys = list(dict.fromkeys(k for r in history for k in r))
        sink = io.StringIO()
        writer = csv.DictWriter(sink, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        return sink.getvalue().rstrip("\n")
    if fmt == "json":
        summary = {"run": best.folder.uri, "epochs": history, "best_epoch": best.epoch, "threads": best.threads,
                   "ranking": best.ranking(), "test": best.test}
        return strict_json(summary)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(history), sink)
        return sink.getvalue()
    head = f"boxtune train run {best.folder.uri}: {best.epochs} epoch{'s' if best.epochs != 1 else ''}"
    return "\n".join([head, *_table(history), "", *_best_lines(best)])
