"""Several objectives: ``search.metric: [AP, latency_ms]`` with ``search.constraints``, over two
architectures and two input sizes, ends with a front; an infeasible trial never wins."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys

import optuna
import pyarrow.parquet as pq
import pytest
from conftest import REPO, tiny_sweep
from shared_run import load_study

from trainables.cost import COST_COLUMNS
from trainables.errors import BoxtuneError
from tune.config import SweepConfig
from tune.run.front import pareto_front
from tune.run.study import RAY_TRIAL_ID
from tune.run.view import load_sweep
from tune.ship.export import export_run
from tune.workflow import run_sweep

ARCHS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_fpn"]
SPACE = {"architecture": {"choice": ARCHS}, "lr": {"loguniform": [0.002, 0.02]}, "batch_size": 4,
         "image_size": {"choice": [64, 96], "when": {"architecture": ARCHS[1]}}}
MODEL = {"weights": None, "by_architecture": {ARCHS[1]: {"box_batch_size_per_image": 64}}}
# SSDlite's pruned model has about 2.3 M parameters, Faster R-CNN MobileNet about 18 M: the limit
# splits the families whatever the timings
MAX_PARAMS = 10e6
TRIALS = 6


def rows_by_number(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["number"])


@pytest.fixture(scope="module")
def front_run(tiny_demo, tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("front")
    cfg = SweepConfig.model_validate(tiny_sweep(
        "front", tiny_demo, root / "runs", model=MODEL, training={"epochs": 2, "seed": 0},
        # batch halving with one rung at epoch 1: a batch of 3 keeps its best 2 (by accuracy alone)
        scheduler={"name": "halving", "grace_period": 1, "reduction_factor": 2, "batch": 3, "stop_on": "score"},
        search={"space": SPACE, "num_trials": TRIALS, "sampler": "tpe", "seed": 0, "metric": ["AP", "latency_ms"],
                "constraints": {"params": {"max": MAX_PARAMS}}},
        checkpoints={"keep_trials": 1}, cost={"repeats": 3, "warmup": 1, "onnx": False}, max_concurrent=2))
    assert cfg.cost.measure  # a cost named: measured without being asked
    lines: list[str] = []
    live = io.StringIO()
    with contextlib.redirect_stdout(live):  # the live table prints to stdout
        rows = run_sweep(cfg, echo=lambda line: lines.append(str(line)))
    return rows, root / "runs" / "front", lines + live.getvalue().splitlines()


def test_the_sweep_ends_with_a_front_and_the_constraint_respected(front_run):
    rows, run, _ = front_run
    assert len(rows) == TRIALS and all(r["status"] == "TERMINATED" and r["best_epoch"] >= 1 for r in rows)
    # each batch's rung stopped its least accurate trial, whatever its latency
    for batch in (rows_by_number(rows)[:3], rows_by_number(rows)[3:]):
        stopped = [r for r in batch if r["epochs"] == 1]
        assert len(stopped) == 1 and stopped[0]["score"] <= min(r["score"] for r in batch), batch
    shapes = {(r["architecture"], r.get("image_size")) for r in rows}
    assert {a for a, _ in shapes} == set(ARCHS), shapes  # the draws cover both families
    for row in rows:  # every trial has its model's figures
        assert all(math.isfinite(row[k]) for k in COST_COLUMNS if k != "onnx_latency_ms"), row
        assert row["latency_p10_ms"] <= row["latency_ms"] <= row["latency_p90_ms"]
        assert row["feasible"] is (row["params"] <= MAX_PARAMS)
        assert row["feasible"] is (row["architecture"] == ARCHS[0])
    # infeasible trials rank after every feasible one, and the winner is the most accurate feasible
    flags = [r["feasible"] for r in rows]
    assert flags == sorted(flags, reverse=True) and flags[0] and not flags[-1]
    feasible = [r for r in rows if r["feasible"]]
    assert rows[0]["score"] == max(r["score"] for r in feasible)
    # the front: the feasible trials no other feasible trial beats on both the score and the latency
    expected = pareto_front({r["trial"]: (r["score"], r["latency_ms"]) for r in feasible})
    assert {r["trial"] for r in rows if r["front"]} == expected and rows[0]["trial"] in expected
    assert not any(r["front"] for r in rows if not r["feasible"])
    # the live lines: a trial outside the limits says so, and is never named the sweep's best
    _, _, lines = front_run
    for row in rows:
        (ended,) = [line for line in lines if line.startswith(f"-- {row['trial']} ")]
        assert ("outside search.constraints: params 1.8" in ended) is (not row["feasible"]), ended
        best = re.search(r"sweep best [\d.]+, (\w+)", ended)
        assert best is None or best.group(1) in {r["trial"] for r in feasible}, ended
    table = pq.read_table(run / "ranking.parquet").to_pylist()
    assert [(r["trial"], r["feasible"], r["front"]) for r in table] == [(r["trial"], r["feasible"], r["front"]) for r in rows]


def test_the_study_weighs_both_objectives_and_knows_the_infeasible(front_run):
    rows, run, _ = front_run
    study = load_study(run)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    by_id = {r["trial"]: r for r in rows}
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == TRIALS and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:
        row = by_id[trial.user_attrs[RAY_TRIAL_ID]]
        # the search was guided by the structures' untrained figures: those the trials reported
        assert trial.values == [pytest.approx(row["score"]), pytest.approx(row["untrained_latency_ms"])]
        assert trial.user_attrs["params"] == row["params"]
        # Trial.set_constraint's value, which TPE reads: > 0 is infeasible
        (violation,) = [v for k, v in trial.system_attrs.items() if k.endswith("params_max")]
        assert violation == pytest.approx(row["params"] - MAX_PARAMS) and (violation <= 0) is row["feasible"]


def test_the_winner_ships_and_the_front_keeps_its_checkpoints(front_run, tmp_path):
    rows, run, _ = front_run
    _, meta = export_run(str(run), tmp_path / "best.pt")
    assert meta["trial_id"] == rows[0]["trial"] and meta["architecture"] == ARCHS[0]
    # keep_trials 1, but every trial on the front (as the trials ended: of the untrained figures they
    # reported) keeps a checkpoint; the others lost theirs
    retention = json.loads((run / "retention.json").read_text())
    front = pareto_front({r["trial"]: (r["score"], r["untrained_latency_ms"]) for r in rows if r["feasible"]})
    assert set(retention["kept"]) == front | {rows[0]["trial"]}
    assert set(retention["deleted"]) == {r["trial"] for r in rows} - front - {rows[0]["trial"]}
    # the winner's export carries its own checkpoint's timing beside its structure's
    trained = json.loads((run / "trained_costs.json").read_text())
    assert meta["trained_cost"] == trained[rows[0]["trial"]] and meta["trained_cost"]["epoch"] == meta["epoch"]
    assert meta["cost"]["weights"] == "untrained" and meta["trained_cost"]["weights"] == "trained"
    # --pick never takes an infeasible trial, even one faster than the limit asked
    fastest_infeasible = min((r for r in rows if not r["feasible"]), key=lambda r: r["latency_ms"])
    feasible_latencies = [r["latency_ms"] for r in rows if r["feasible"]]
    if fastest_infeasible["latency_ms"] < min(feasible_latencies):
        with pytest.raises(BoxtuneError, match="no trial runs within"):
            export_run(str(run), tmp_path / "none.pt", pick=f"max-latency={min(feasible_latencies) * 0.99:.4f}")
    _, meta = export_run(str(run), tmp_path / "fast.pt", pick=f"max-latency={max(feasible_latencies) * 1.01:.4f}")
    assert meta["trial_id"] == rows[0]["trial"]


def test_no_feasible_trial_means_no_winner(front_run, tmp_path):
    _, run, _ = front_run
    view = load_sweep(str(run))
    view.config.search.constraints["params"].max = 1.0  # re-ranked under a limit nothing meets
    from tune.run.ranking import pick_trial, rank_trials

    assert not any(r["feasible"] for r in rank_trials(view, intervals=False))
    with pytest.raises(BoxtuneError, match=r"no trial meets search.constraints \(params <= 1\), so none wins"):
        pick_trial(view)


def test_the_report_marks_the_front_and_plots_it(front_run, tmp_path):
    rows, run, _ = front_run
    out = subprocess.run([sys.executable, "-m", "tune.cli", "report", str(run), "--plot", str(tmp_path / "plots")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.splitlines()
    header = table[0].split()
    assert {"latency_ms", "front", "limits"} <= set(header), header
    for row in rows:  # each trial's line: front or dominated, within or outside the limits
        (line,) = [t for t in table if t.split()[1:2] == [row["trial"]]]
        cells = line.split()
        assert cells[header.index("front")] == ("-" if not row["feasible"] else "front" if row["front"] else "dominated")
        assert cells[header.index("limits")] == ("within" if row["feasible"] else "outside")
    assert any(t.startswith("front: on the Pareto front of AP (best epoch, val) against latency_ms") for t in table)
    assert any(t.startswith("limits: search.constraints (params <= 1e+07)") for t in table)
    # the kept trials were timed trained; the others carry their structure's figure, and the note
    # says so, and that Faster R-CNN's (timed untrained, every RPN proposal kept) is an upper bound
    kept = sum(not math.isnan(r["trained_latency_ms"]) for r in rows)
    lower = sum(r["latency_from"] == "trained" for r in rows)
    (note,) = [t for t in table if t.startswith("latency_ms: ") and "timed trained after the sweep" in t]
    assert note.startswith(f"latency_ms: {kept} trial{'s' if kept != 1 else ''} kept {'their' if kept != 1 else 'its'} "
                           f"best checkpoint and {'were' if kept != 1 else 'was'} timed trained after the sweep, on ")
    assert f"the trained one for {lower} (latency_from)" in note
    assert note.endswith("which for Faster R-CNN is an upper bound: an untrained RPN passes every proposal to the box head")
    for row in rows:
        (line,) = [t for t in table if t.split()[1:2] == [row["trial"]]]
        assert line.split()[header.index("timed")] == row["latency_from"]
    assert f"wrote {tmp_path / 'plots' / 'accuracy_vs_latency.png'}" in out.stderr
    # the figure: one point per trial, in its group
    from tune.results.plots import front_figure

    fig = front_figure(load_sweep(str(run)), rows)
    (ax,) = fig.axes
    drawn = {c.get_label(): len(c.lines[0].get_xdata()) for c in ax.containers}
    assert drawn == {k: v for k, v in {"front": sum(bool(r["front"]) for r in rows),
                                       "dominated": sum(r["front"] is False and r["feasible"] for r in rows),
                                       "outside the limits": sum(not r["feasible"] for r in rows)}.items() if v}


def test_the_kept_checkpoints_are_timed_trained_and_rank_by_that(front_run):
    rows, run, lines = front_run
    retention = json.loads((run / "retention.json").read_text())
    trained = json.loads((run / "trained_costs.json").read_text())
    # every trial that kept its checkpoint, and only those, was timed on the val images after the sweep
    assert set(trained) == set(retention["kept"]) and trained
    n_val = load_sweep(str(run)).manifest().table.column("split").to_pylist().count("val")
    assert (f"cost.trained: timing {len(trained)} kept checkpoint{'s' if len(trained) != 1 else ''} (each trial's "
            f"best epoch) on {min(n_val, 3)} val images, one process each") in lines
    costs = json.loads((run / "costs.json").read_text())
    for row in rows:
        (structure,) = [f for f in costs.values() if f["latency_ms"] == row["untrained_latency_ms"]
                        and f["params"] == row["params"]]
        if row["trial"] in trained:
            figures = trained[row["trial"]]
            assert figures["weights"] == "trained" and row["trained_latency_ms"] == figures["latency_ms"]
            assert figures["epoch"] == row["best_epoch"] and figures["images"] == min(n_val, 3)
            # the lower of the two ranks: a trained figure above the untrained upper bound is timing noise
            source = figures if figures["latency_ms"] <= row["untrained_latency_ms"] else structure
            assert row["latency_from"] == ("trained" if source is figures else "untrained")
            assert [row[k] for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms")] == \
                [source[k] for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms")]
            assert figures["architecture"] == structure["architecture"] and figures["params"] == row["params"]
            assert any(line.startswith(f"  trial {row['trial']} (rank {row['rank']}, epoch {row['best_epoch']}): ")
                       and f"untrained {structure['latency_ms']:.1f} ms" in line for line in lines)
        else:  # its checkpoint was deleted: its structure's figure stays
            assert row["latency_from"] == "untrained" and row["latency_ms"] == row["untrained_latency_ms"]
            assert math.isnan(row["trained_latency_ms"])
    # TensorBoard: each timed trial's trained figures at step 0, and the sweep's HParams experiment lists them
    from tensorboard.backend.event_processing import event_accumulator as ea

    for row in rows:
        acc = ea.EventAccumulator(row["path"], size_guidance={ea.SCALARS: 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        if row["trial"] in trained:
            assert [(e.step, e.value) for e in acc.Scalars("cost/trained_latency_ms")] == [
                (0, pytest.approx(trained[row["trial"]]["latency_ms"], rel=1e-6))]
        else:
            assert "cost/trained_latency_ms" not in tags and "cost/latency_ms" in tags
    (experiment,) = run.glob("*.boxtune-hparams")
    assert b"cost/trained_latency_ms" in experiment.read_bytes()
    # ranking.parquet keeps both, and the front it marks is that of the figures it shows
    table = {r["trial"]: r for r in pq.read_table(run / "ranking.parquet").to_pylist()}
    assert {t: (r["latency_ms"], r["latency_from"], r["untrained_latency_ms"]) for t, r in table.items()} == \
        {r["trial"]: (r["latency_ms"], r["latency_from"], r["untrained_latency_ms"]) for r in rows}


def test_the_best_config_trains_on_the_accuracy_objective(front_run, tmp_path):
    rows, run, _ = front_run
    from tune.config import TrainConfig, load_config
    from tune.results.best_config import write_best_config

    path = write_best_config(load_sweep(str(run)), tmp_path / "best.yaml")
    cfg = load_config(path, TrainConfig)  # boxtune train weighs one objective: the list's accuracy part
    assert cfg.metric == "AP" and cfg.model.architecture == rows[0]["architecture"]
