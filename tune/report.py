"""Ranking a sweep's trials by COCO AP of their best epoch (ties: AR100), with Optuna importances.

A trial's score is the AP of its best epoch, not its last: ASHA stops trials at different epochs
and a schedule can overshoot. The ranking is written next to the experiment as
``ranking.parquet`` when a sweep ends, and ``boxtune report`` prints it as a table, CSV, JSON or
Parquet.
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

from trainables.errors import ConfigError
from trainables.reporting import sort_score
from tune.storage import RunStorage

__all__ = ["RANKING_FILE", "SweepView", "load_sweep", "rank_trials", "write_ranking", "format_ranking",
           "param_importances", "METRIC_COLUMNS"]

RANKING_FILE = "ranking.parquet"
METRIC_COLUMNS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")


@dataclass
class TrialView:
    trial_id: str
    status: str  # PENDING, RUNNING, TERMINATED, ERROR (Ray's names)
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one dict per reported epoch
    error: str | None
    path: str

    def best(self) -> dict[str, Any] | None:
        rows = [r for r in self.history if "AP" in r]
        if not rows:
            return None
        return max(rows, key=lambda r: (sort_score(r.get("AP")), sort_score(r.get("AR100"))))


@dataclass
class SweepView:
    uri: str
    trials: list[TrialView]
    num_trials: int  # asked for in the config
    analysis: Any  # ray.tune.ExperimentAnalysis


def load_sweep(run: str) -> SweepView:
    """Read a sweep folder (while it runs or after). A folder with no experiment state is a ConfigError."""
    import yaml
    from ray.tune import ExperimentAnalysis

    storage = RunStorage.from_uri(run)
    if not storage.exists("sweep.yaml"):
        raise ConfigError(f"{run}: not a boxtune sweep folder (no sweep.yaml)")
    num_trials = int(yaml.safe_load(storage.read_text("sweep.yaml")).get("search", {}).get("num_trials", 0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = ExperimentAnalysis(storage.uri)
    except (FileNotFoundError, ValueError, RuntimeError):
        return SweepView(storage.uri, [], num_trials, None)
    frames = analysis.trial_dataframes
    trials = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        history = [] if frame is None or frame.empty else frame.to_dict("records")
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
    return SweepView(storage.uri, trials, num_trials, analysis)


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


def rank_trials(view: SweepView) -> list[dict[str, Any]]:
    """Rows best first: rank, trial, status, AP..AR100 of the best epoch, best epoch, epochs run, varying hparams."""
    varying = _varying(view.trials)
    rows = []
    for t in view.trials:
        best = t.best()
        row: dict[str, Any] = {"rank": 0, "trial": t.trial_id, "status": t.status}
        for key in METRIC_COLUMNS:
            row[key] = float(best[key]) if best is not None and best.get(key) is not None else float("nan")
        row["best_epoch"] = int(best["epoch"]) if best is not None else 0
        row["epochs"] = max((int(r.get("epoch", 0)) for r in t.history), default=0)
        for key in varying:
            value = t.config.get(key)
            row[key] = None if value is None else (value if isinstance(value, bool | int | float) else str(value))
        row["error"] = t.error
        row["path"] = t.path
        rows.append(row)
    rows.sort(key=lambda r: (r["best_epoch"] == 0, -sort_score(r["AP"]), -sort_score(r["AR100"]), r["trial"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def _distribution(values: list[Any]):
    dist = optuna.distributions
    if all(isinstance(v, bool) or isinstance(v, str) for v in values):
        return dist.CategoricalDistribution(sorted(set(values), key=str))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return dist.IntDistribution(min(values), max(values))
    lo, hi = float(min(values)), float(max(values))
    log = lo > 0 and hi / lo > 20
    return dist.FloatDistribution(lo, hi, log=log)


def param_importances(view: SweepView) -> dict[str, float]:
    """Optuna's importances of the varying hyperparameters that every finished trial has, for best AP."""
    done = [t for t in view.trials if t.best() is not None]
    # scalar hyperparameters every finished trial has (a list such as milestones is not one)
    varying = [k for k in _varying(done)
               if all(k in t.config and isinstance(t.config[k], bool | int | float | str) for t in done)]
    if len(done) < 3 or not varying:
        return {}
    dists = {k: _distribution([t.config[k] for t in done]) for k in varying}
    if any(getattr(d, "low", 0) == getattr(d, "high", 1) for d in dists.values()):
        dists = {k: d for k, d in dists.items() if getattr(d, "low", 0) != getattr(d, "high", 1)}
    study = optuna.create_study(direction="maximize")
    for t in done:
        study.add_trial(optuna.trial.create_trial(params={k: t.config[k] for k in dists}, distributions=dists,
                                                  value=sort_score(t.best()["AP"])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}


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
                   importances: dict[str, float] | None = None) -> bytes | str:
    """Render ranking rows as a text table, CSV, JSON or Parquet bytes."""
    rows = rows[:top] if top else rows
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(_table(rows), sink)
        return sink.getvalue()
    if fmt == "json":
        return json.dumps({"trials": rows, "importances": importances or {}}, indent=2, default=str,
                          allow_nan=True).replace("NaN", "null")
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
    cells = [[_cell(r.get(k)) for k in shown if k != "error"] for r in rows]
    header = [k for k in shown if k != "error"]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    errors = [f"  {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        lines += ["", "errored trials:", *errors]
    if importances:
        lines += ["", "hyperparameter importance for best AP (Optuna, finished trials):"]
        lines += [f"  {k:<20} {v:.3f}" for k, v in importances.items()]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else (f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}")
    return str(value)
