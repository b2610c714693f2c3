"""Ranking a sweep's trials by the objective of their best epoch (ties: AR100), with Optuna importances.

A trial ranks by ``best_score``: the score (``trainables.objective``: ``search.metric`` on the val
split, AR100 folded in as the tiebreak) of its best epoch, not its last, since ASHA stops trials
at different epochs and a schedule can overshoot. Ray's rungs, the searcher and checkpoint keeping
use the same key, so the exported model is the ranked one. Test-split numbers (``test_AP``, ...;
``tune.holdout``) are shown beside the val numbers for the trials evaluated there and never rank.
The ranking is written next to the experiment as ``ranking.parquet`` when a sweep ends, and
``boxtune report`` prints it as a table, CSV, JSON or Parquet.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.atomic import strict_json
from trainables.errors import ConfigError
from trainables.objective import Objective, best_epoch, class_key, parse_objective, score_of
from tune.holdout import OPTIMISTIC_NOTE, TEST_PREFIX, read_test_results
from tune.storage import RunStorage

__all__ = ["RANKING_FILE", "SweepView", "load_sweep", "rank_trials", "write_ranking", "format_ranking",
           "param_importances", "Importances", "MIN_TRIALS_FOR_IMPORTANCE", "METRIC_COLUMNS", "TEST_COLUMNS", "trial_row", "sweep_notes", "per_class_rows",
           "format_per_class", "best_per_class"]

RANKING_FILE = "ranking.parquet"
METRIC_COLUMNS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")
TEST_COLUMNS = ("AP", "AP50", "AP75", "AR100")  # shown as test_AP, ... for trials evaluated on the test split


@dataclass
class TrialView:
    trial_id: str
    status: str  # PENDING, RUNNING, TERMINATED, ERROR (Ray's names)
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one dict per reported epoch
    error: str | None
    path: str

    def best(self, objective: Objective | None = None) -> dict[str, Any] | None:
        """The best epoch by score (see ``trainables.objective.best_epoch``); None before the first."""
        return best_epoch([r for r in self.history if "AP" in r], objective)


@dataclass
class SweepView:
    uri: str
    trials: list[TrialView]
    num_trials: int  # asked for in the config
    analysis: Any  # ray.tune.ExperimentAnalysis
    objective: Objective | None = None  # search.metric; None: AP
    test_results: dict[str, Any] | None = None  # test_results.json (tune.holdout)
    has_test_split: bool = False  # the run's manifest holds test images


def load_sweep(run: str) -> SweepView:
    """Read a sweep folder (while it runs or after). A folder with no experiment state is a ConfigError."""
    import yaml
    from ray.tune import ExperimentAnalysis

    storage = RunStorage.from_uri(run)
    if not storage.exists("sweep.yaml"):
        raise ConfigError(f"{run}: not a boxtune sweep folder (no sweep.yaml)")
    search = (yaml.safe_load(storage.read_text("sweep.yaml")) or {}).get("search", {}) or {}
    num_trials = int(search.get("num_trials", 0))
    extras = {"objective": parse_objective(search.get("metric", "AP")), "test_results": read_test_results(storage),
              "has_test_split": _has_test_split(storage)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = ExperimentAnalysis(storage.uri)
    except (FileNotFoundError, ValueError, RuntimeError):
        return SweepView(storage.uri, [], num_trials, None, **extras)
    frames = analysis.trial_dataframes
    trials = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        history = _one_row_per_epoch([] if frame is None or frame.empty else frame.to_dict("records"))
        error = None
        if str(trial.status) == "ERROR":
            error_path = f"{storage.path}/{trial.storage.trial_dir_name}/error.txt"
            try:
                with storage.fs.open_input_stream(error_path) as src:
                    error = _last_error_line(src.read().decode(errors="replace"))
            except OSError:
                error = "errored (no error file)"
        trials.append(TrialView(trial.trial_id, str(trial.status), dict(trial.config), history, error,
                                f"{storage.uri}/{trial.storage.trial_dir_name}"))
    return SweepView(storage.uri, trials, num_trials, analysis, **extras)


def _one_row_per_epoch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial's epochs in order, each once: where an epoch was reported twice (a resumed trial that
    ran it again from an older checkpoint), the later report wins. ``boxtune resume`` cuts result
    files back to the checkpoint first (tune.resume_logs); this covers folders resumed otherwise."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in rows:
        by_epoch.pop(row.get("epoch", row.get("training_iteration")), None)
        by_epoch[row.get("epoch", row.get("training_iteration"))] = row
    return list(by_epoch.values())


def _has_test_split(storage: RunStorage) -> bool:
    """Whether the run's manifest has test images (reads its split column only)."""
    from tune.holdout import TEST_SPLIT
    from tune.sweep import MANIFEST_FILE

    if not storage.exists(MANIFEST_FILE):
        return False
    with storage.fs.open_input_file(f"{storage.path}/{MANIFEST_FILE}") as src:
        splits = pq.read_table(src, columns=["split"]).column("split")
    return TEST_SPLIT in set(splits.to_pylist())


def _last_error_line(text: str) -> str:
    """The exception line of a traceback: 'NonFiniteLossError: non-finite loss at epoch 2, step 3: ...'."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line.removeprefix("ray.exceptions.RayTaskError(").strip()
    return lines[-1] if lines else "errored"


def _varying(trials: list[TrialView]) -> list[str]:
    keys = sorted({k for t in trials for k in t.config})
    out = []
    for key in keys:
        values = {json.dumps(t.config.get(key), sort_keys=True, default=str) for t in trials}
        if len(values) > 1:
            out.append(key)
    return out


def _metric(best: dict[str, Any] | None, key: str) -> float:
    value = None if best is None else best.get(key)
    return float("nan") if value is None else float(value)


def _row(view: SweepView, t: TrialView, varying: list[str]) -> dict[str, Any]:
    objective = view.objective
    best = t.best(objective)
    row: dict[str, Any] = {"rank": 0, "trial": t.trial_id, "status": t.status}
    for key in METRIC_COLUMNS:
        row[key] = _metric(best, key)
    if objective is not None and objective.label != "AP":
        row["objective"] = objective.value(best) if best is not None else float("nan")
    row["score"] = score_of(best, objective) if best is not None else float("nan")
    row["best_epoch"] = int(best["epoch"]) if best is not None else 0
    row["epochs"] = max((int(r.get("epoch", 0)) for r in t.history), default=0)
    if view.test_results is not None:
        tested = (view.test_results.get("trials") or {}).get(t.trial_id)
        metrics = tested["metrics"] if tested is not None else {}
        for key in TEST_COLUMNS:
            row[f"{TEST_PREFIX}{key}"] = _metric(metrics, key)
        row[f"{TEST_PREFIX}epoch"] = int(tested["epoch"]) if tested is not None else None
    for key in varying:
        value = t.config.get(key)
        row[key] = None if value is None else (value if isinstance(value, bool | int | float) else str(value))
    row["error"] = t.error
    row["path"] = t.path
    return row


def rank_trials(view: SweepView) -> list[dict[str, Any]]:
    """Rows best first by ``score`` (the objective on val, then AR100): rank, trial, status, AP..AR100
    of the best epoch, score, best epoch, epochs run, test numbers where evaluated, varying hparams.
    """
    varying = _varying(view.trials)
    rows = [_row(view, t, varying) for t in view.trials]
    # trials without an epoch last; NaN scores cannot occur (an unmeasurable epoch scores NAN_SCORE)
    rows.sort(key=lambda r: (r["best_epoch"] == 0, -(r["score"] if r["best_epoch"] else 0.0), r["trial"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def trial_row(view: SweepView, trial: TrialView) -> dict[str, Any]:
    """One trial's ranking row (its rank unset): what ``rank_trials`` reports for it."""
    return _row(view, trial, [])


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
    varying = _varying(done)
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


def write_ranking(run: str) -> list[dict[str, Any]]:
    """Rank the sweep and write ``ranking.parquet`` into its folder; return the rows."""
    view = load_sweep(run)
    rows = rank_trials(view)
    storage = RunStorage.from_uri(run)
    table = _table(rows)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    with storage.fs.open_output_stream(f"{storage.path}/{RANKING_FILE}") as out:
        out.write(sink.getvalue())
    return rows


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return pa.table({"rank": pa.array([], pa.int64()), "trial": pa.array([], pa.string())})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for key in keys:
        values = [r.get(key) for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds - {int, float, bool} or (bool in kinds and kinds != {bool}):
            values = [None if v is None else str(v) for v in values]
        elif kinds == {int, float}:
            values = [None if v is None else float(v) for v in values]
        columns[key] = values
    return pa.table(columns)


def format_ranking(rows: list[dict[str, Any]], *, fmt: str = "table", top: int | None = None,
                   importances: dict[str, float] | None = None, notes: list[str] = ()) -> bytes | str:
    """Render ranking rows as a text table, CSV, JSON or Parquet bytes; ``notes`` (``sweep_notes``) follow a table."""
    rows = rows[:top] if top else rows
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(_table(rows), sink)
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
