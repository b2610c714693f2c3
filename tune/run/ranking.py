"""The ranking: one order for every place that ranks trials.

A trial ranks by ``best_score``: the score (``trainables.objective``: ``search.metric`` on the val
split, AR100 folded in as the tiebreak) of its best epoch, not its last, since ASHA stops trials
at different epochs and a schedule can overshoot. Trials without a finished epoch come last. Equal
scores are ordered by creation: the trial the search created first ranks first (never by Ray's
random trial id). The ranking table, ``ranking.parquet``, the live table
(``tune.launch.progress``), checkpoint retention (``tune.launch.retention``), the test-split
evaluation and export all order trials with ``rank_order``, so they name the same best trial.
Test-split numbers (``test_AP``, ...) are shown beside the val numbers for the trials evaluated
there and never rank.

Where the trials' best epochs have their val detections stored, each row also gets a 95% interval
of the objective (``ci_low``, ``ci_high``), the share of paired resamples in which the leader
beats it (``leader_beats``) and whether it can be told apart from the leader
(``distinguishable``; see ``tune.run.intervals``).

With several objectives or ``search.constraints`` (``tune.run.front``), rows also get ``front``
(on the Pareto front of the best score and the named costs) and ``feasible`` (within every
limit); infeasible trials rank after every feasible one, so the first row, the winner, is the
most accurate feasible trial.

With a confirmation stage (``search.confirm``), each confirmed config's row also gets its seeds'
summary (``tune.run.confirmation``: ``seeds``, ``mean``, ``seed_sd``, ``seed_min``, ``seed_max``
and ``ship``, the trial whose checkpoint ships). Confirmed configs rank first, by their mean score,
then the others as above; the interval and the leader's mark are then those of the mean over
seeds, on the same resamples. The metric columns stay the search trial's own.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from trainables.cost import COST_COLUMNS
from trainables.errors import BoxtuneError
from trainables.objective import BEST_SCORE, cost_objectives, fold_score, parse_objective, score_of
from tune.run.confirmation import CONFIRM_COLUMNS, seed_members, summarise_seeds
from tune.run.front import FEASIBLE, FRONT, describe_limits, feasible_front, limits_of, meets
from tune.run.intervals import Intervals, paired_intervals, run_objective, val_ground_truth
from tune.run.layout import TEST_PREFIX
from tune.run.view import UNNUMBERED, SweepView, TrialView, creation_number

__all__ = ["METRIC_COLUMNS", "TEST_COLUMNS", "INTERVAL_COLUMNS", "TRAINED_COLUMNS", "UNNUMBERED", "creation_number", "rank_order",
           "result_score", "rank_trials", "trained_figures", "latency_cells",
           "trial_row", "ranking_table", "write_ranking", "pick_trial", "test_columns", "varying_keys",
           "ranking_intervals"]

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")
TEST_COLUMNS = ("AP", "AP50", "AP75", "AR100")  # shown as test_AP, ... for trials evaluated on the test split
INTERVAL_COLUMNS = ("ci_low", "ci_high", "leader_beats", "distinguishable")
# with cost.measure: which model the latency columns were timed on, and the structure's untrained figure
TRAINED_COLUMNS = ("latency_from", "untrained_latency_ms", "trained_latency_ms")


def rank_order(score: float | None, number: int, trial_id: str = "") -> tuple[bool, float, int, str]:
    """The sort key of a trial (ascending: best first) from its best score (None before its first
    epoch) and its creation number: equal scores rank in creation order.

    A NaN score cannot occur (an unmeasurable epoch scores ``NAN_SCORE``); a missing one sorts last.
    """
    measured = score is not None and not math.isnan(float(score))
    return (not measured, -float(score) if measured else 0.0, int(number), trial_id)


def result_score(result: dict[str, Any]) -> float | None:
    """A trial's best score so far from its latest result; None before its first epoch.

    Results without ``best_score`` (runs from before objectives were reported) score by best AP,
    then best AR100, exactly as the AP objective folds them.
    """
    if BEST_SCORE in result:
        return float(result[BEST_SCORE])
    if "best_AP" in result:
        return fold_score(result.get("best_AP"), result.get("best_AR100"))
    return None


def test_columns(metrics: dict[str, float]) -> dict[str, float]:
    """Test numbers under their report names: ``AP`` -> ``test_AP``."""
    return {f"{TEST_PREFIX}{k}": v for k, v in metrics.items()}


def varying_keys(trials: list[TrialView]) -> list[str]:
    """Config keys whose value differs between ``trials`` (the searched hyperparameters), sorted."""
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
    row.update(_test_cells(view, t.trial_id))
    row.update(latency_cells(view, t))
    for key in varying:
        value = t.config.get(key)
        row[key] = None if value is None else (value if isinstance(value, bool | int | float) else str(value))
    row["number"] = t.number  # creation order: breaks exact ties
    row["error"] = t.error
    row["path"] = t.path
    return row


def trained_figures(view: SweepView, t: TrialView) -> dict[str, Any] | None:
    """The trained timing of ``t``'s best checkpoint (``trained_costs.json``, ``tune.results.trained_costs``);
    None when it was not timed, or was timed at another epoch than its best (a resumed trial's)."""
    figures = view.trained_costs.get(t.trial_id)
    best = t.best(view.objective)
    if figures is None or best is None or int(figures.get("epoch", -1)) != int(best["epoch"]):
        return None
    return figures


def latency_cells(view: SweepView, t: TrialView) -> dict[str, Any]:
    """The model's cost figures (``cost.measure``: every result carries its structure's); none when
    not measured.

    Where the trial's best checkpoint was timed trained (``trained_figures``), ``latency_ms`` (with
    its spread) and ``onnx_latency_ms`` are each the trained figure where it is the lower:
    the structure's untrained figure is timed on the same input size with every proposal passing,
    an upper bound, so a trained figure above it is timing noise. That keeps every decision made
    while the trials ran on the untrained figures (which trials met the limits, which kept their
    checkpoints) true: a kept trial can only gain. ``latency_from`` says which model ``latency_ms``
    was timed on; ``untrained_latency_ms`` and ``trained_latency_ms`` (NaN when not timed) are both kept.
    """
    measured = next((r for r in reversed(t.history) if "latency_ms" in r), None)
    if measured is None:
        return {}
    cells: dict[str, Any] = {key: _metric(measured, key) for key in COST_COLUMNS}
    trained = trained_figures(view, t)
    timed = _metric(trained, "latency_ms")
    lower = not math.isnan(timed) and timed <= cells["latency_ms"]
    if lower:
        cells.update({key: _metric(trained, key) for key in ("latency_ms", "latency_p10_ms", "latency_p90_ms")})
    onnx = _metric(trained, "onnx_latency_ms")  # NaN where ONNX Runtime failed on the trained graph
    if not math.isnan(onnx) and not onnx > cells["onnx_latency_ms"]:  # also where the untrained one is NaN
        cells["onnx_latency_ms"] = onnx
    return {**cells, "latency_from": "trained" if lower else "untrained",
            "untrained_latency_ms": _metric(measured, "latency_ms"), "trained_latency_ms": timed}


def _test_cells(view: SweepView, trial_id: str) -> dict[str, Any]:
    """The test split's numbers of ``trial_id`` (NaN where it was not evaluated); none without test results."""
    if view.test_results is None:
        return {}
    tested = (view.test_results.get("trials") or {}).get(trial_id)
    metrics = tested["metrics"] if tested is not None else {}
    cells = {f"{TEST_PREFIX}{key}": _metric(metrics, key) for key in TEST_COLUMNS}
    if "ci_low" in metrics:  # the objective's 95% interval on the test images
        cells[f"{TEST_PREFIX}ci_low"], cells[f"{TEST_PREFIX}ci_high"] = _metric(metrics, "ci_low"), _metric(metrics, "ci_high")
    cells[f"{TEST_PREFIX}epoch"] = int(tested["epoch"]) if tested is not None else None
    return cells


def _confirmed(view: SweepView, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each confirmed config's seed summary after ``score`` and, where its shipped
    checkpoint is another seed's, that seed's test numbers; confirmed configs first, by mean score."""
    out = []
    for row in rows:
        summary = None
        if view.confirm is not None and len(members := seed_members(view, row["trial"])) > 1:
            measured = []
            for part, trial, _seed in members:
                cells = trial_row(part, trial)
                if cells["best_epoch"]:
                    measured.append((trial.trial_id, cells.get("objective", cells["AP"]), cells["score"]))
            summary = summarise_seeds(measured)
        values = summary.columns() if summary is not None else {"seeds": 1 if row["best_epoch"] else 0,
                                                               **dict.fromkeys(CONFIRM_COLUMNS[1:5], math.nan),
                                                               "ship": row["trial"]}
        if summary is not None and summary.ship != row["trial"]:
            row.update(_test_cells(view, summary.ship))
            ship = view.trial(summary.ship)
            row.update(latency_cells(view.part_of(ship.trial_id), ship))  # the checkpoint that ships, timed or not
        new: dict[str, Any] = {}
        for key, value in row.items():
            new[key] = value
            if key == "score":
                new.update(values)
        new["_mean_score"] = summary.mean_score if summary is not None else None
        out.append(new)
    out.sort(key=lambda r: (r["_mean_score"] is None, *rank_order(r["_mean_score"] if r["_mean_score"] is not None
                                                                  else (r["score"] if r["best_epoch"] else None),
                                                                  r["number"], r["trial"])))
    for row in out:
        del row["_mean_score"]
    return out


def rank_trials(view: SweepView, *, intervals: bool = True) -> list[dict[str, Any]]:
    """Rows best first (``rank_order``): rank, trial, status, AP..AR100 of the best epoch, score, best
    epoch, epochs run, the interval columns (with ``intervals``, where detections are stored), test
    numbers where evaluated, the varying hyperparameters, error, path."""
    varying = varying_keys(view.trials)
    rows = [_row(view, t, varying) for t in view.trials]
    rows.sort(key=lambda r: rank_order(r["score"] if r["best_epoch"] else None, r["number"], r["trial"]))
    if view.config is not None and view.config.search.confirm.top:
        rows = _confirmed(view, rows)
    if view.config is not None:
        rows = _weigh_costs(rows, limits_of(view.config.search), cost_objectives(view.config.search.metric))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    if intervals:
        try:
            found = ranking_intervals(view, rows)
        except Exception as err:  # noqa: BLE001 - the ranking stands without its intervals; say why
            log.warning("intervals not computed: %s: %s", type(err).__name__, err)
            found = None
        if found is not None:
            view.intervals = found
            for i, row in enumerate(rows):
                rows[i] = _with_interval(row, found)
    return rows


def _weigh_costs(rows: list[dict[str, Any]], limits, costs: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows with ``feasible`` (with limits) and ``front`` (with cost objectives) after ``score``,
    infeasible rows moved after the feasible ones (otherwise in order)."""
    if not limits and not costs:
        return rows
    marks = {}
    for row in rows:
        marks[row["trial"]] = {FEASIBLE: meets(row, limits)} if limits else {}
    if costs:
        members = feasible_front({r["trial"]: (r["score"], r) for r in rows if r["best_epoch"] > 0}, costs, limits)
        for row in rows:
            marks[row["trial"]][FRONT] = (row["trial"] in members) if row["best_epoch"] > 0 else None
    out = []
    for row in rows:
        new: dict[str, Any] = {}
        for key, value in row.items():
            new[key] = value
            if key == "score":
                new.update(marks[row["trial"]])
        out.append(new)
    out.sort(key=lambda r: r.get(FEASIBLE) is False)  # stable: the order within each group stays
    return out


def _with_interval(row: dict[str, Any], found: Intervals) -> dict[str, Any]:
    """``row`` with the interval columns after ``epochs`` (NaN and None for a trial without stored detections)."""
    iv = found.trials.get(row["trial"])
    if iv is None:
        values = (math.nan, math.nan, math.nan, None)
    else:
        values = (iv.low, iv.high, iv.beaten, iv.distinguishable)  # the leader: False, as from itself
    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = value
        if key == "epochs":
            out.update(zip(INTERVAL_COLUMNS, values, strict=True))
    return out


def ranking_intervals(view: SweepView, rows: list[dict[str, Any]]) -> Intervals | None:
    """The paired bootstrap of the ranked trials' best epochs (``tune.run.intervals``); None when no
    trial has its best epoch's detections stored (a run from before they were, or no epoch yet)."""
    ranked = [r for r in rows if r["best_epoch"] > 0]
    if not ranked or view.folder is None:
        return None
    manifest = view.manifest()
    gt = val_ground_truth(manifest)
    objective = view.objective or parse_objective("AP")
    samples = {}
    for row in ranked:
        # a confirmed config: the mean over its seeds' best epochs, resample by resample (all stored, or none)
        members = seed_members(view, row["trial"]) if row.get("seeds", 1) > 1 else [(view, view.trial(row["trial"]), 0)]
        per_seed = []
        for part, trial, _seed in members:
            epoch = trial_row(part, trial)["best_epoch"]
            detections = part.folder.read_detections(trial.dir_name, epoch) if epoch else None
            if epoch and detections is None:
                per_seed = []
                break
            if detections is not None:
                per_seed.append(run_objective(gt, detections, manifest, objective))
        if per_seed:
            samples[row["trial"]] = sum(per_seed) / len(per_seed)
    if ranked[0]["trial"] not in samples:  # no leader to compare with (its detections were never stored)
        return None
    return paired_intervals(samples, [r["trial"] for r in ranked], images=len(gt.getImgIds()))


def trial_row(view: SweepView, trial: TrialView) -> dict[str, Any]:
    """One trial's ranking row (its rank unset): what ``rank_trials`` reports for it."""
    return _row(view, trial, [])


def pick_trial(view: SweepView, trial: str | None = None) -> TrialView:
    """Trial ``trial`` by id (a search or a confirmation trial), else the best-ranked one with a
    finished epoch; for a confirmed config, the seed that ships (``ship``). A BoxtuneError if none."""
    if not view.trials:
        raise BoxtuneError(f"{view.uri}: the sweep has no trials yet")
    by_id = {t.trial_id: t for t in view.all_trials()}
    if trial is not None:
        if trial not in by_id:
            raise BoxtuneError(f"{view.uri}: no trial {trial!r}; trials: {', '.join(sorted(by_id))}")
        return by_id[trial]
    ranked = [row for row in rank_trials(view, intervals=False) if row["best_epoch"] > 0]
    if not ranked:
        raise BoxtuneError(f"{view.uri}: no trial has finished an epoch yet; nothing to export")
    if ranked[0].get(FEASIBLE) is False:  # infeasible rows rank last: none meets the limits
        limits = describe_limits(limits_of(view.config.search))
        raise BoxtuneError(f"{view.uri}: no trial meets search.constraints ({limits}), so none wins; choose one "
                           f"with --trial (boxtune report lists them, limits: outside)")
    return by_id[ranked[0].get("ship") or ranked[0]["trial"]]  # a confirmed config: its seed closest to the mean


def ranking_table(rows: list[dict[str, Any]]):
    """Ranking rows as a pyarrow table (mixed columns become strings; ints with floats become floats)."""
    import pyarrow as pa

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


def write_ranking(view: SweepView) -> list[dict[str, Any]]:
    """Rank the sweep and write ``ranking.parquet`` into its folder; return the rows."""
    rows = rank_trials(view)
    view.folder.write_ranking(ranking_table(rows))
    return rows
