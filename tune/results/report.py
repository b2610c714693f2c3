"""The ranking as a person reads it: a text table, CSV, JSON or Parquet, the notes under it,
per-class numbers, and Optuna's hyperparameter importances.

The order and the rows are the ranking's (``tune.run.ranking``): each trial by the objective of its
best epoch on val (ties: AR100). ``boxtune report`` prints them; ``ranking.parquet`` holds the same
rows. Test-split numbers (``test_AP``, ...; ``tune.results.holdout``) are shown beside the val
numbers for the trials evaluated there and never rank.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import optuna
import pyarrow.parquet as pq

from trainables.atomic import strict_json
from trainables.errors import ConfigError
from trainables.objective import class_key, score_of
from tune.results.holdout import OPTIMISTIC_NOTE
from tune.run.layout import TEST_PREFIX
from tune.run.ranking import METRIC_COLUMNS, ranking_table, varying_keys
from tune.run.view import SweepView

__all__ = ["format_ranking", "param_importances", "Importances", "MIN_TRIALS_FOR_IMPORTANCE", "sweep_notes",
           "per_class_rows", "format_per_class", "best_per_class", "sweep_summary"]


def _metric(best: dict[str, Any] | None, key: str) -> float:
    value = None if best is None else best.get(key)
    return float("nan") if value is None else float(value)


def sweep_notes(view: SweepView) -> list[str]:
    """Lines a report adds below the table: the objective, and how far to trust the val numbers."""
    label = view.objective.label if view.objective is not None else "AP"
    notes = [f"ranked by {label} of each trial's best epoch on val (ties: AR100)"]
    if not view.has_test_split:
        notes.append(OPTIMISTIC_NOTE)
    elif view.test_results:
        notes.append(f"test_* columns: the best epoch evaluated once on the held-out test split "
                     f"({view.test_results.get('images', 0)} images); they do not rank")
    return notes


def per_class_rows(view: SweepView, rows: list[dict[str, Any]], *, top: int = 1) -> list[dict[str, Any]]:
    """Per-class AP and AR100 of the top ``top`` ranked trials' best epochs (val, and test where evaluated)."""
    by_id = {t.trial_id: t for t in view.trials}
    out = []
    for row in [r for r in rows if r["best_epoch"] > 0][:top]:
        best = by_id[row["trial"]].best(view.objective) or {}
        tested = ((view.test_results or {}).get("trials") or {}).get(row["trial"])
        names = [k[3:-1] for k in best if isinstance(k, str) and k.startswith("AP[") and k.endswith("]")]
        for name in names:
            line: dict[str, Any] = {"rank": row["rank"], "trial": row["trial"], "epoch": row["best_epoch"], "class": name}
            for stat in ("AP", "AR100"):
                line[stat] = _metric(best, class_key(stat, name))
            if tested is not None:
                for stat in ("AP", "AR100"):
                    line[f"{TEST_PREFIX}{stat}"] = _metric(tested["metrics"], class_key(stat, name))
            out.append(line)
    return out


def best_per_class(view: SweepView, rows: list[dict[str, Any]]) -> str:
    """The end-of-sweep summary's per-class table of the best trial ('' before any epoch)."""
    lines = per_class_rows(view, rows, top=1)
    if not lines:
        return ""
    return f"per class, best trial {lines[0]['trial']} at epoch {lines[0]['epoch']}:\n{format_per_class(lines)}"


def format_per_class(lines: list[dict[str, Any]]) -> str:
    """Per-class rows as a text table."""
    if not lines:
        return "no per-class numbers (no trial has finished an epoch)"
    keys = list(dict.fromkeys(k for line in lines for k in line))
    cells = [[_cell(line.get(k)) for k in keys] for line in lines]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    text = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    text += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(text)


def _distribution(values: list[Any]):
    dist = optuna.distributions
    if all(isinstance(v, bool) or isinstance(v, str) for v in values):
        return dist.CategoricalDistribution(sorted(set(values), key=str))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return dist.IntDistribution(min(values), max(values))
    lo, hi = float(min(values)), float(max(values))
    log = lo > 0 and hi / lo > 20
    return dist.FloatDistribution(lo, hi, log=log)


MIN_TRIALS_FOR_IMPORTANCE = 8  # fewer finished trials cannot separate one hyperparameter's effect from noise


class Importances(dict):
    """Hyperparameter name -> Optuna importance (sums to 1), and what a reader needs to judge them.

    Empty (and falsy) when ``finished`` is below ``MIN_TRIALS_FOR_IMPORTANCE``; ``left_out`` names
    the conditional hyperparameters (not sampled in every finished trial), which fANOVA cannot take.
    """

    def __init__(self, values: dict[str, float] | None = None, *, finished: int, left_out: list[str] | None = None):
        super().__init__(values or {})
        self.finished = finished
        self.left_out = list(left_out or [])

    def lines(self) -> list[str]:
        if self.finished < MIN_TRIALS_FOR_IMPORTANCE:
            return [f"hyperparameter importance: too few trials ({self.finished} finished; it needs at least "
                    f"{MIN_TRIALS_FOR_IMPORTANCE})"]
        if not self:
            return ["hyperparameter importance: no hyperparameter varied across every finished trial"]
        lines = [f"hyperparameter importance for the objective (Optuna fANOVA, seed 0, {self.finished} finished trials):"]
        lines += [f"  {k:<20} {v:.3f}" for k, v in self.items()]
        if self.left_out:
            lines.append(f"  left out (conditional, not in every trial): {', '.join(self.left_out)}")
        return lines


def param_importances(view: SweepView) -> Importances:
    """Optuna's fANOVA importances (seeded: two reports agree) of the hyperparameters every finished trial has.

    Below ``MIN_TRIALS_FOR_IMPORTANCE`` finished trials there are none, only the count.
    """
    done = [t for t in view.trials if t.best(view.objective) is not None]
    varying = varying_keys(done)
    # scalar hyperparameters every finished trial has (a list such as milestones is not one)
    kept = [k for k in varying if all(k in t.config and isinstance(t.config[k], bool | int | float | str) for t in done)]
    left_out = [k for k in varying if k not in kept]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE or not kept:
        return Importances(finished=len(done), left_out=left_out)
    dists = {k: _distribution([t.config[k] for t in done]) for k in kept}
    dists = {k: d for k, d in dists.items() if getattr(d, "low", 0) != getattr(d, "high", 1)}
    study = optuna.create_study(direction="maximize")
    for t in done:
        study.add_trial(optuna.trial.create_trial(params={k: t.config[k] for k in dists}, distributions=dists,
                                                  value=score_of(t.best(view.objective), view.objective)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks the evaluators experimental
            values = {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError):
        values = {}
    return Importances(values, finished=len(done), left_out=left_out)


def format_ranking(rows: list[dict[str, Any]], *, fmt: str = "table", top: int | None = None,
                   importances: dict[str, float] | None = None, notes: list[str] = ()) -> bytes | str:
    """Render ranking rows as a text table, CSV, JSON or Parquet bytes; ``notes`` (``sweep_notes``) follow a table."""
    rows = rows[:top] if top else rows
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(ranking_table(rows), sink)
        return sink.getvalue()
    if fmt == "json":
        return strict_json({"trials": rows, "importances": importances or {}, "notes": list(notes)}, default=str)
    shown = [k for k in (rows[0].keys() if rows else []) if k not in ("path",)]
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=shown, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt != "table":
        raise ConfigError(f"--format: expected one of table, csv, json, parquet, got {fmt!r}")
    cells = [[_cell(r.get(k), figures=not _is_metric(k)) for k in shown if k != "error"] for r in rows]
    header = [k for k in shown if k != "error"]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    errors = [f"  {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["", "errored trials:", *errors]
    if notes:
        lines += ["", *notes]
    if isinstance(importances, Importances):
        lines += ["", *importances.lines()]
    elif importances:
        lines += ["", "hyperparameter importance (Optuna):", *(f"  {k:<20} {v:.3f}" for k, v in importances.items())]
    return "\n".join(lines)


def _is_metric(key: str) -> bool:
    return key in METRIC_COLUMNS or key in ("objective", "score") or key.startswith(TEST_PREFIX)


def _cell(value: Any, *, figures: bool = False) -> str:
    """A table cell: metrics to 4 decimals; with ``figures`` (a hyperparameter), a value under 0.01
    to 3 significant figures, so that a learning rate or an eps does not show as 0.0000."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if figures and value and abs(value) < 0.01:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}"
    return str(value)


def sweep_summary(view: SweepView, rows: list[dict[str, Any]], *, top: int | None = None) -> str:
    """The end of ``boxtune sweep``, ``resume`` and ``demo``: the ranking table with its notes and
    importances, then the best trial's per-class numbers."""
    if not rows:
        return format_ranking(rows, top=top)
    text = format_ranking(rows, top=top, importances=param_importances(view), notes=sweep_notes(view))
    per_class = best_per_class(view, rows)
    return f"{text}\n\n{per_class}" if per_class else text
