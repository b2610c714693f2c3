"""PNG plots of a sweep (``boxtune report RUN --plot DIR``), drawn with matplotlib's Agg backend.

* ``ap_per_epoch.png``: validation AP per epoch, one line per trial. A trial the scheduler (ASHA or batch halving)
  stopped before the planned number of epochs ends in an ``x``; errored trials are dashed.
* ``ap_vs_<hparam>.png``: each trial's best AP against the value of one searched hyperparameter
  (log x-axis for a positive range spanning more than 20x; categories as a strip plot). The
  best trial is ringed.
* ``accuracy_vs_latency.png`` (a sweep run with ``cost.measure``): each trial's best objective on
  val against its model's latency at batch 1, with its 95% interval where the ranking has one.
  With several objectives the Pareto front (``tune.run.front``) is joined by a line and dominated
  trials are grey; trials outside ``search.constraints`` are crosses, and a latency limit is a
  dashed line.
* ``importance.png``: Optuna's fANOVA importances of the hyperparameters for the objective
  (needs 8 finished trials; see ``tune.results.report.param_importances``).

AP is COCO's AP@[.5:.95] on the validation split. Trials that errored before finishing an epoch
have nothing to plot and are left out. Figures are built without pyplot, so plotting touches no
global matplotlib state.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tune.results.report import MIN_TRIALS_FOR_IMPORTANCE, param_importances
from tune.run.front import eligible
from tune.run.ranking import varying_keys

__all__ = ["AP_LABEL", "LOG_SPAN", "searched_hparams", "ap_per_epoch_figure", "hparam_figure", "importance_figure",
           "write_plots"]

AP_LABEL = "AP@[.5:.95] (validation)"
LOG_SPAN = 20.0  # a positive numeric range wider than this factor gets a log x-axis
_MAX_LEGEND = 24  # trials named in the legend; more would hide the plot
_STRIP_WIDTH = 0.3  # total horizontal spread of one category's points, in category units


def _epochs(trial) -> list[tuple[int, float]]:
    """(epoch, AP) pairs of a trial's reported epochs, in order, AP NaN where undefined."""
    points = []
    for row in trial.history:
        if "AP" in row and row.get("epoch") is not None:
            ap = row.get("AP")
            points.append((int(row["epoch"]), float("nan") if ap is None else float(ap)))
    return sorted(points)


def _planned_epochs(view) -> int | None:
    """``training.epochs`` from the sweep's saved config, or None for a view without one."""
    return None if view.config is None else int(view.config.training.epochs)


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def ap_per_epoch_figure(view, *, planned_epochs: int | None = None) -> Figure:
    """AP per epoch for every trial with at least one epoch; early-stopped trials end in an 'x'."""
    trials = [t for t in view.trials if _epochs(t)]
    planned = planned_epochs or max((_epochs(t)[-1][0] for t in trials), default=0)
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    stopped_any = False
    for trial in trials:
        points = _epochs(trial)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        last = xs[-1]
        stopped = trial.status == "TERMINATED" and last < planned
        note = {"ERROR": " (error)", "RUNNING": " (running)"}.get(trial.status, "")
        if stopped:
            note = f" (stopped at epoch {last})"
        line = ax.plot(xs, ys, marker="o", markersize=3, linestyle="--" if trial.status == "ERROR" else "-",
                       label=f"{trial.trial_id}{note}", gid=trial.trial_id)[0]
        if stopped:
            stopped_any = True
            ax.plot([xs[-1]], [ys[-1]], marker="x", markersize=10, markeredgewidth=2, linestyle="none",
                    color=line.get_color(), gid=f"{trial.trial_id}:stopped")
    ax.set_title(f"Validation AP per epoch ({len(trials)} trials)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(AP_LABEL)
    if planned:
        ax.set_xlim(0.5, planned + 0.5)
        ax.set_xticks(range(1, planned + 1, max(1, planned // 12)))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > _MAX_LEGEND:
        handles, labels = [], []
    if stopped_any:
        handles.append(Line2D([], [], marker="x", linestyle="none", color="black", markersize=8, markeredgewidth=2))
        labels.append("x: stopped early by the scheduler (ASHA or halving)")
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    if not trials:
        ax.text(0.5, 0.5, "no trial has finished an epoch yet", ha="center", va="center", transform=ax.transAxes)
    return fig


def searched_hparams(view) -> list[str]:
    """Config keys whose value differs between trials (the searched hyperparameters), sorted."""
    return varying_keys(view.trials)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def hparam_figure(view, rows: list[dict[str, Any]], name: str) -> Figure:
    """Each finished trial's best AP against its value of ``name``; the best trial is ringed."""
    configs = {t.trial_id: t.config for t in view.trials}
    points = [(configs[r["trial"]][name], float(r["AP"]), r["rank"]) for r in rows
              if r["best_epoch"] > 0 and name in configs.get(r["trial"], {}) and not math.isnan(r["AP"])]
    fig = _figure()
    ax = fig.add_subplot()
    best = min(points, key=lambda p: p[2], default=None)
    if points and all(_is_number(v) for v, _, _ in points):
        xs = [float(v) for v, _, _ in points]
        ax.scatter(xs, [ap for _, ap, _ in points], s=30, alpha=0.8)
        if min(xs) > 0 and max(xs) / min(xs) > LOG_SPAN:
            ax.set_xscale("log")
        ax.set_xlabel(f"{name} (log scale)" if ax.get_xscale() == "log" else name)
    else:
        categories = sorted({str(v) for v, _, _ in points})
        index = {c: i for i, c in enumerate(categories)}
        xs = []
        seen: dict[str, int] = {}
        counts = {c: sum(str(v) == c for v, _, _ in points) for c in categories}
        for v, _, _ in points:
            c = str(v)
            k, n = seen.get(c, 0), counts[c]
            seen[c] = k + 1
            # spread a category's points evenly across the strip, in input order (deterministic)
            xs.append(index[c] + (0.0 if n == 1 else _STRIP_WIDTH * (k / (n - 1) - 0.5)))
        ax.scatter(xs, [ap for _, ap, _ in points], s=30, alpha=0.8)
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.6, max(len(categories) - 0.4, 0.6))
        ax.set_xlabel(f"{name} (categorical)")
    if best is not None:
        bx = xs[points.index(best)]
        ax.scatter([bx], [best[1]], s=160, facecolors="none", edgecolors="crimson", linewidths=1.5, label="best trial")
        ax.legend(loc="best", fontsize="small")
    ax.set_ylabel(f"best {AP_LABEL}")
    ax.set_title(f"Best AP against {name} ({len(points)} trials)")
    ax.grid(alpha=0.3)
    return fig


def importance_figure(importances: dict[str, float]) -> Figure:
    """Horizontal bars of Optuna's hyperparameter importances for best AP, largest on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = _figure(7.0, max(2.5, 0.4 * len(items) + 1.2))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4363d8")
    ax.set_xlabel("importance for the objective (Optuna fANOVA, seed 0, sums to 1)")
    ax.set_title("Hyperparameter importance")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, bbox_inches="tight")
    return path


def front_figure(view, rows: list[dict[str, Any]]) -> Figure:
    """Each finished trial's best objective against its latency; the front joined, the winner ringed."""
    label = view.objective.label if view.objective is not None else "AP"
    key = "objective" if any("objective" in r for r in rows) else "AP"
    done = [r for r in rows if r["best_epoch"] > 0 and _is_number(r.get("latency_ms")) and _is_number(r.get(key))]
    fig = _figure()
    ax = fig.add_subplot()
    groups = (("front", lambda r: r.get("front") is True, dict(color="tab:blue", marker="o")),
              ("dominated", lambda r: r.get("front") is False and r.get("feasible") is not False,
               dict(color="0.6", marker="o")),
              ("outside the limits", lambda r: r.get("feasible") is False, dict(color="tab:red", marker="x")),
              ("trials", lambda r: "front" not in r and r.get("feasible") is not False, dict(color="tab:blue", marker="o")))
    for name, member, style in groups:
        chosen = [r for r in done if member(r)]
        if not chosen:
            continue
        xs, ys = [float(r["latency_ms"]) for r in chosen], [float(r[key]) for r in chosen]
        low = [y - float(r["ci_low"]) if _is_number(r.get("ci_low")) else 0.0 for r, y in zip(chosen, ys, strict=True)]
        high = [float(r["ci_high"]) - y if _is_number(r.get("ci_high")) else 0.0 for r, y in zip(chosen, ys, strict=True)]
        ax.errorbar(xs, ys, yerr=[low, high], linestyle="none", capsize=2, alpha=0.8, label=name, **style)
        if name == "front":
            line = sorted(zip(xs, ys, strict=True))
            ax.plot([x for x, _ in line], [y for _, y in line], color="tab:blue", linewidth=1, alpha=0.6)
    # cost.trained: where some trials were timed trained, the others' untrained figures are drawn hollow
    mixed = any(r.get("latency_from") == "trained" for r in done)
    untrained = [r for r in done if r.get("latency_from") == "untrained"] if mixed else []
    if untrained:
        ax.scatter([float(r["latency_ms"]) for r in untrained], [float(r[key]) for r in untrained], s=14,
                   color="white", zorder=2.5)
    winner = next((r for r in done if eligible(r)), None)
    if winner is not None:
        ax.scatter([float(winner["latency_ms"])], [float(winner[key])], s=160, facecolors="none", edgecolors="crimson",
                   linewidths=1.5, label="rank 1", zorder=3)
    search = view.config.search if view.config is not None else None
    bound = search.constraints.get("latency_ms") if search is not None else None
    if bound is not None and bound.max is not None:
        ax.axvline(bound.max, color="tab:red", linestyle="--", linewidth=1, label=f"latency_ms <= {bound.max:g}")
    ax.set_xlabel("latency at batch 1 (ms, median; filled: the trained model, hollow: the untrained structure's)"
                  if untrained else "latency at batch 1 (ms, median; cost.measure)")
    ax.set_ylabel(f"best {label} on val (95% interval where stored)")
    ax.set_title(f"{label} against latency ({len(done)} trials)")
    ax.grid(alpha=0.3)
    if done:
        ax.legend(loc="best", fontsize="small")
    return fig


def write_plots(view, rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write the sweep's PNG plots into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_save(ap_per_epoch_figure(view, planned_epochs=_planned_epochs(view)), out / "ap_per_epoch.png")]
    if any("latency_ms" in r for r in rows):  # cost.measure
        written.append(_save(front_figure(view, rows), out / "accuracy_vs_latency.png"))
    for name in searched_hparams(view):
        written.append(_save(hparam_figure(view, rows, name), out / f"ap_vs_{_file_name(name)}.png"))
    finished = sum(1 for r in rows if r["best_epoch"] > 0)
    if finished < MIN_TRIALS_FOR_IMPORTANCE:
        print(f"importance plot skipped: too few trials (it needs {MIN_TRIALS_FOR_IMPORTANCE} finished, "
              f"the sweep has {finished})", file=sys.stderr)
        return written
    importances = param_importances(view)
    if not importances:
        print("importance plot skipped: no hyperparameter varies across the finished trials", file=sys.stderr)
        return written
    written.append(_save(importance_figure(importances), out / "importance.png"))
    return written
