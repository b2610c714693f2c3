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
from dataclasses import replace
from typing import Any

import optuna
import pyarrow.parquet as pq

from search_spaces.builtin import PARAM_ALIASES
from trainables.architectures import FAMILIES
from trainables.atomic import strict_json
from trainables.cost import COST_COLUMNS
from trainables.errors import ConfigError
from trainables.objective import class_key, cost_objectives, score_of
from tune.results.holdout import OPTIMISTIC_NOTE
from tune.run.confirmation import CONFIRM_COLUMNS
from tune.run.front import describe_limits, eligible, limits_of
from tune.run.intervals import class_intervals
from tune.run.layout import TEST_PREFIX
from tune.run.ranking import (
    INTERVAL_COLUMNS,
    METRIC_COLUMNS,
    TRAINED_COLUMNS,
    latency_cells,
    ranking_table,
    varying_keys,
)
from tune.run.view import SweepView

__all__ = ["interval_notes", "front_notes", "format_ranking", "param_importances", "Importances", "MIN_TRIALS_FOR_IMPORTANCE", "sweep_notes",
           "per_class_rows", "format_per_class", "best_per_class", "sweep_summary"]


def _metric(best: dict[str, Any] | None, key: str) -> float:
    value = None if best is None else best.get(key)
    return float("nan") if value is None else float(value)


def sweep_notes(view: SweepView) -> list[str]:
    """Lines a report adds below the table: the objective, and how far to trust the val numbers."""
    label = view.objective.label if view.objective is not None else "AP"
    notes = [f"ranked by {label} of each trial's best epoch on val (ties: AR100)"]
    confirm = view.config.search.confirm if view.config is not None else None
    if confirm is not None and confirm.top and view.confirm is not None:
        notes.append(f"confirmed: the top {confirm.top} configs were trained again on {confirm.seeds} new seeds "
                     f"and rank first, by the mean over their seeds (the search trial's counts as one; seeds: "
                     f"how many, min..max); their 95%CI and vs_leader are the mean's; export ships the seed "
                     f"closest to the mean (ship)")
    if view.intervals is not None:
        notes += interval_notes(view.intervals, label)
    notes += front_notes(view)
    if not view.has_test_split:
        notes.append(OPTIMISTIC_NOTE)
    elif view.test_results:
        notes.append(f"test_* columns: the best epoch evaluated once on the held-out test split "
                     f"({view.test_results.get('images', 0)} images); they do not rank")
    return notes


def front_notes(view: SweepView) -> list[str]:
    """With several objectives or search.constraints: what the front and limit columns mean."""
    search = view.config.search if view.config is not None else None
    if search is None:
        return []
    label = view.objective.label if view.objective is not None else "AP"
    notes = []
    costs = cost_objectives(search.metric)
    if costs:
        notes.append(f"front: on the Pareto front of {label} (best epoch, val) against {', '.join(costs)} "
                     f"(cost.measure: batch 1, CPU, {view.config.cost.threads} thread"
                     f"{'s' if view.config.cost.threads != 1 else ''}): no other feasible trial is as good on "
                     f"each and better on one; rank 1 is the most accurate feasible trial, and "
                     f"boxtune export --pick fastest-tied or --pick max-latency=MS choose along the front")
    timed = [c for c in ("latency_ms", "onnx_latency_ms") if c in search.costs]
    if timed and view.folder is not None:
        notes += _latency_notes(view, timed[0])
    if search.constraints:
        notes.append(f"limits: search.constraints ({describe_limits(limits_of(search))}); a trial outside them (limits: outside) is "
                     f"ranked after every trial within them and never wins")
    return notes


def _latency_notes(view: SweepView, name: str) -> list[str]:
    """Which latency each row's figure is: its trained model's, timed after the trials ended
    (``tune.results.trained_costs``), or its structure's, timed untrained (an upper bound for Faster R-CNN)."""
    structures = (view.folder.costs() or {}).values()
    fasterrcnn = any(FAMILIES.get(figures.get("architecture")) == "fasterrcnn" for figures in structures)
    cells = [latency_cells(view, t) for t in view.trials]
    timed = sum(not math.isnan(c.get("trained_latency_ms", math.nan)) for c in cells)
    if timed:
        trained = sum(c.get("latency_from") == "trained" for c in cells)
        images = max(int(f.get("images") or 0) for f in view.trained_costs.values())
        line = (f"{name}: {timed} trial{'s' if timed != 1 else ''} kept {'their' if timed != 1 else 'its'} best "
                f"checkpoint and {'were' if timed != 1 else 'was'} timed trained after the sweep, on {images} val "
                f"images resized to the model's input (trained_latency_ms); the ranking takes the lower of that and "
                f"the structure's untrained figure (untrained_latency_ms), the trained one for {trained} "
                f"(latency_from); the other trials carry the untrained figure")
        if fasterrcnn:
            line += (", which for Faster R-CNN is an upper bound: an untrained RPN passes every proposal to the "
                     "box head")
        return [line]
    if not fasterrcnn:
        return []
    why = "cost.trained: false" if view.config is not None and not view.config.cost.trained else "no kept checkpoint timed"
    return [f"{name}: Faster R-CNN's figure is an upper bound ({why}): it is timed untrained, when every "
            f"RPN proposal passes the RPN's score filter and goes through the box head; a trained model "
            f"passes fewer and runs faster (docs/benchmarks.md, \"Latency figures\")"]


def _ranks(ranks: list[int]) -> str:
    """``1-3``, ``1, 2 and 4``."""
    if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}" if len(ranks) > 1 else str(ranks[0])


def interval_notes(found, label: str = "AP") -> list[str]:
    """What the intervals say, in words: which trials cannot be told apart from the leader, and what
    would tell them apart when none can."""
    order = list(found.trials)
    if len(order) < 2:
        return [f"95%CI: {label} over {found.resamples:,} bootstrap resamples of the {found.images} val images"]
    tied = [found.ranks[t] for t in found.tied_with_leader()]
    where = f"on this val set ({found.images} images)"
    if found.ranked > len(order):
        where += f"; {found.ranked - len(order)} of the {found.ranked} ranked trials have no stored detections"
    lines = [f"95%CI: {label} over {found.resamples:,} paired bootstrap resamples of the val images; vs_leader: "
             f"the share of them in which the leader scores higher (told apart from 95%)"]
    if len(tied) == len(order):
        lines.append(f"no trial can be told apart from the leader {where}: the ranking is within noise. More val "
                     f"images would separate them; search.confirm trains the top configs again on new seeds")
    elif len(tied) > 1:
        lines.append(f"trials ranked {_ranks(tied)} cannot be told apart {where}")
    else:
        lines.append(f"the leader is told apart from every other trial {where}")
    return lines


def per_class_rows(view: SweepView, rows: list[dict[str, Any]], *, top: int = 1) -> list[dict[str, Any]]:
    """Per-class AP, AP50 and AR100 of the top ``top`` ranked trials' best epochs, each with its 95%
    interval where the epoch's detections are stored (val; test AP and AR100 where evaluated)."""
    by_id = {t.trial_id: t for t in view.trials}
    out = []
    for row in [r for r in rows if r["best_epoch"] > 0][:top]:
        trial = by_id[row["trial"]]
        best = trial.best(view.objective) or {}
        tested = ((view.test_results or {}).get("trials") or {}).get(row["trial"])
        names = [k[3:-1] for k in best if isinstance(k, str) and k.startswith("AP[") and k.endswith("]")]
        found = None if view.folder is None else class_intervals(view.folder, view.manifest(), trial.dir_name,
                                                                 row["best_epoch"])
        for name in names:
            line: dict[str, Any] = {"rank": row["rank"], "trial": row["trial"], "epoch": row["best_epoch"], "class": name}
            intervals = (found or {}).get(name)
            for stat in ("AP", "AP50", "AR100") if intervals else ("AP", "AR100"):
                # the reported number; AP50, which an epoch reports only for an objective that reads it,
                # from the stored detections
                reported = class_key(stat, name) in best or not intervals
                line[stat] = _metric(best, class_key(stat, name)) if reported else intervals[stat][0]
                if intervals:
                    line[f"{stat}_ci_low"], line[f"{stat}_ci_high"] = intervals[stat][1:]
            if tested is not None:
                for stat in ("AP", "AR100"):
                    line[f"{TEST_PREFIX}{stat}"] = _metric(tested["metrics"], class_key(stat, name))
            out.append(line)
    return out


def best_per_class(view: SweepView, rows: list[dict[str, Any]]) -> str:
    """The end-of-sweep summary's per-class table of the best trial ('' before any epoch)."""
    # the winner: a trial outside search.constraints never is one (they rank last)
    lines = per_class_rows(view, [r for r in rows if eligible(r)], top=1)
    if not lines:
        return ""
    return f"per class, best trial {lines[0]['trial']} at epoch {lines[0]['epoch']}:\n{format_per_class(lines)}"


def format_per_class(lines: list[dict[str, Any]]) -> str:
    """Per-class rows as a text table."""
    if not lines:
        return "no per-class numbers (no trial has finished an epoch)"
    keys = [k for k in dict.fromkeys(k for line in lines for k in line) if not k.endswith("_ci_high")]
    header = [f"{k.removesuffix('_ci_low')}_95%CI" if k.endswith("_ci_low") else k for k in keys]
    cells = [[_interval_cell({"ci_low": line.get(k), "ci_high": line.get(k.replace("_ci_low", "_ci_high"))})
              if k.endswith("_ci_low") else _cell(line.get(k)) for k in keys] for line in lines]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(header)]
    text = ["  ".join(k.ljust(w) for k, w in zip(header, widths, strict=True)).rstrip()]
    text += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    return "\n".join(text)


def _distribution(values: list[Any], *, log: bool | None = None):
    """The Optuna distribution ``values`` span; ``log`` None: log scale when positive and over 20x apart."""
    dist = optuna.distributions
    if all(isinstance(v, bool) or isinstance(v, str) for v in values):
        return dist.CategoricalDistribution(sorted(set(values), key=str))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return dist.IntDistribution(min(values), max(values))
    lo, hi = float(min(values)), float(max(values))
    if log is None:
        log = lo > 0 and hi / lo > 20
    return dist.FloatDistribution(lo, hi, log=log and lo > 0)


def _importance_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as importance sees it: the per-optimiser learning rates (``lr_sgd``,
    ``lr_adam``) as the one ``lr`` they set, so the learning rate is in every trial whatever the optimiser."""
    out = {k: v for k, v in config.items() if k not in PARAM_ALIASES}
    for alias, name in PARAM_ALIASES.items():
        if alias in config and name not in out:
            out[name] = config[alias]
    return out


# merged names, on a log scale whatever their spread: a learning rate acts by its order of magnitude
_LOG_SCALE = frozenset(PARAM_ALIASES.values())


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
    params = [_importance_params(t.config) for t in done]
    varying = varying_keys([replace(t, config=p) for t, p in zip(done, params, strict=True)])
    # scalar hyperparameters every finished trial has (a list such as milestones is not one)
    kept = [k for k in varying if all(k in p and isinstance(p[k], bool | int | float | str) for p in params)]
    left_out = [k for k in varying if k not in kept]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE or not kept:
        return Importances(finished=len(done), left_out=left_out)
    dists = {k: _distribution([p[k] for p in params], log=True if k in _LOG_SCALE else None) for k in kept}
    dists = {k: d for k, d in dists.items() if getattr(d, "low", 0) != getattr(d, "high", 1)}
    study = optuna.create_study(direction="maximize")
    for t, p in zip(done, params, strict=True):
        study.add_trial(optuna.trial.create_trial(params={k: p[k] for k in dists}, distributions=dists,
                                                  value=score_of(t.best(view.objective), view.objective)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks the evaluators experimental
            values = {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError):
        values = {}
    return Importances(values, finished=len(done), left_out=left_out)


TABLE_WIDTH = 120  # the default table's width in characters; --wide shows every column


def format_ranking(rows: list[dict[str, Any]], *, fmt: str = "table", top: int | None = None,
                   importances: dict[str, float] | None = None, notes: list[str] = (),
                   wide: bool = False) -> bytes | str:
    """Render ranking rows as a text table, CSV, JSON or Parquet bytes; ``notes`` (``sweep_notes``) follow a table.

    The table shows, within ``TABLE_WIDTH`` columns: rank, trial, status, the objective of the best
    epoch with its 95% interval and its standing against the leader, AR100, the best epoch of the
    epochs run, test numbers where evaluated, then as many of the varying hyperparameters as fit.
    ``wide`` shows every column.
    """
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
    columns = _table_columns(rows, wide=wide)
    cells = [[render(r) for _, render in columns] for r in rows]
    header = [name for name, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    if not wide:  # drop trailing hyperparameter columns until the table fits
        hidden = 0
        while len(widths) > _FIXED_MAX and sum(widths) + 2 * (len(widths) - 1) > TABLE_WIDTH and header[-1] not in _CORE:
            header, widths, cells, hidden = header[:-1], widths[:-1], [c[:-1] for c in cells], hidden + 1
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    if not wide and (hidden or len(shown) > len(header)):
        lines.append("(more columns: --wide)")
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


NOT_TESTED = "-"  # one marker for a number that was not measured (no epoch, not evaluated on test)
_CORE = ("rank", "trial", "status", "mean", "seeds", "AP", "objective", "95%CI", "vs_leader", "AR100", "epoch",
         "latency_ms", "front", "limits")
_FIXED_MAX = 4  # never drop below rank, trial, status and the objective


def _seeds_cell(row: dict[str, Any]) -> str:
    """``3: 0.162..0.215``: a confirmed config's seeds and their spread; ``-`` for one seed."""
    low, high = row.get("seed_min"), row.get("seed_max")
    if (row.get("seeds") or 0) < 2 or low is None or math.isnan(low):
        return NOT_TESTED
    return f"{row['seeds']}: {low:.3f}..{high:.3f}"


def _interval_cell(row: dict[str, Any]) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return NOT_TESTED
    return f"{low:.3f}..{high:.3f}"


def _standing(row: dict[str, Any]) -> str:
    """``leader``; ``noise(71%)``: the leader beats it in 71% of paired resamples, fewer than 95%,
    so the two cannot be told apart; ``behind(99%)``: told apart."""
    beaten, distinct = row.get("leader_beats"), row.get("distinguishable")
    if distinct is None:
        return NOT_TESTED
    if row.get("rank") == 1:
        return "leader"
    if beaten is None or math.isnan(beaten):
        return "noise(-)"  # no resample measured both
    return f"{'behind' if distinct else 'noise'}({beaten:.0%})"


def _table_columns(rows: list[dict[str, Any]], *, wide: bool):
    """(header, cell renderer) pairs of the text table."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("path", "error")))
    has_intervals = "ci_low" in keys
    objective = "objective" if "objective" in keys else "AP"

    def value(key):
        return lambda r: _cell(r.get(key), figures=not _is_metric(key))

    def epochs(r):
        return f"{r['best_epoch']}/{r['epochs']}" if r.get("best_epoch") else NOT_TESTED

    if wide:
        columns = []
        for key in keys:
            if key in ("ci_low", "leader_beats"):
                continue
            if key == "ci_high":
                columns.append(("95%CI", _interval_cell))
            elif key == "distinguishable":
                columns.append(("vs_leader", _standing))
            else:
                columns.append((key, value(key)))
        return columns
    columns = [(k, value(k)) for k in ("rank", "trial", "status") if k in keys]
    if "mean" in keys:  # search.confirm: the mean over a config's seeds ranks
        columns += [("mean", value("mean")), ("seeds", _seeds_cell)]
    if objective in keys:
        columns.append((objective, value(objective)))
    if has_intervals:
        columns += [("95%CI", _interval_cell), ("vs_leader", _standing)]
    if objective != "AP" and "AP" in keys:
        columns.append(("AP", value("AP")))
    if "AR100" in keys:
        columns.append(("AR100", value("AR100")))
    if "best_epoch" in keys:
        columns.append(("epoch", epochs))
    if "front" in keys or "feasible" in keys:  # several objectives, search.constraints (tune.run.front)
        columns.append(("latency_ms", value("latency_ms")))
        if "latency_from" in keys:  # trained or untrained (tune.results.trained_costs)
            columns.append(("timed", value("latency_from")))
    if "front" in keys:
        columns.append(("front", lambda r: NOT_TESTED if r.get("front") is None or r.get("feasible") is False
                         else ("front" if r["front"] else "dominated")))
    if "feasible" in keys:
        columns.append(("limits", lambda r: "within" if r.get("feasible") else "outside"))
    test = f"{TEST_PREFIX}{'AP' if objective == 'objective' else objective}"
    if test in keys:
        columns.append((test, value(test)))
    hidden = {*METRIC_COLUMNS, "objective", "score", "best_epoch", "epochs", "number", *INTERVAL_COLUMNS,
              *CONFIRM_COLUMNS, "front", "feasible"}
    if "front" in keys or "feasible" in keys:
        hidden.update(("latency_ms", "latency_from"))
    rest = [k for k in keys if k not in hidden and not k.startswith(TEST_PREFIX) and k not in ("rank", "trial", "status")]
    # the hyperparameters (architecture, image_size, ...) before the cost figures' spread and sizes,
    # so that a table cut to 120 columns keeps what tells the trials apart
    columns += [(k, value(k)) for k in sorted(rest, key=lambda k: k in COST_COLUMNS or k in TRAINED_COLUMNS)]
    return columns


def _is_metric(key: str) -> bool:
    return key in METRIC_COLUMNS or key in ("objective", "score", "mean") or key.startswith(TEST_PREFIX)


def _cell(value: Any, *, figures: bool = False) -> str:
    """A table cell: metrics to 4 decimals; with ``figures`` (a hyperparameter), a value under 0.01
    to 3 significant figures, so that a learning rate or an eps does not show as 0.0000. Nothing
    measured (None, NaN) is ``NOT_TESTED``."""
    if value is None:
        return NOT_TESTED
    if isinstance(value, float):
        if math.isnan(value):
            return NOT_TESTED
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
