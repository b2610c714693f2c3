"""``cost.measure``: every model structure a space can produce, timed before the trials, in each result,
the ranking and the export; a sweep with it off runs the same trials to the same ranking."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import TINY_MODEL, tiny_sweep

from trainables.cost import COST_COLUMNS, structure_key
from trainables.errors import ConfigError
from tune.config import SweepConfig
from tune.launch.costs import cost_figures, space_structures
from tune.launch.sweep import _define_by_run
from tune.results.tensorboard import write_hparams_experiment
from tune.results.trained_costs import time_trained_models
from tune.run.view import load_sweep
from tune.ship.export import export_run
from tune.trial_config import merge_trial_config, sweep_base
from tune.workflow import run_sweep

ARCHS = ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_fpn"]
MODEL = {"weights": None, "by_architecture": {ARCHS[1]: {"min_size": 96, "max_size": 96}}}


def _structures(tmp_path, space, model=MODEL) -> list[str]:
    cfg = SweepConfig.model_validate(tiny_sweep("c", tmp_path / "data", tmp_path / "runs", model=model,
                                                search={"space": space, "num_trials": 2}))
    base = sweep_base(cfg)
    return [structure_key(m) for m in space_structures(_define_by_run(cfg), lambda s: merge_trial_config(base, s))]


def _key(arch, size=None) -> str:
    return json.dumps({"architecture": arch, **({"max_size": size, "min_size": size} if size else {})}, sort_keys=True)


def test_every_architecture_and_size_the_space_offers_is_one_structure(tmp_path):
    space = {"architecture": {"choice": ARCHS}, "lr": {"loguniform": [0.001, 0.01]}, "batch_size": 4,
             "image_size": {"choice": [64, 128, 160], "when": {"architecture": ARCHS[1]}}}
    assert _structures(tmp_path, space) == sorted([_key(ARCHS[0]), _key(ARCHS[1], 64), _key(ARCHS[1], 128),
                                                   _key(ARCHS[1], 160)])
    # no size searched: the architecture's by_architecture size; nothing searched: the model section's
    assert _structures(tmp_path, {"architecture": {"choice": ARCHS}, "batch_size": 4}) == sorted(
        [_key(ARCHS[0]), _key(ARCHS[1], 96)])
    assert _structures(tmp_path, "quick", model=TINY_MODEL) == [_key(TINY_MODEL["architecture"], 96)]


def test_a_size_searched_over_a_range_cannot_be_measured_ahead(tmp_path):
    with pytest.raises(ConfigError, match=r"cost.measure: the space searches image_size over a range \(64 to 128\)"):
        _structures(tmp_path, {"architecture": {"value": ARCHS[1]}, "image_size": {"int": [64, 128]}, "batch_size": 4})


def test_figures_of_a_structure_never_measured_are_a_bug_not_a_guess():
    costs = {_key(ARCHS[0]): {k: 1.0 for k in COST_COLUMNS} | {"onnx_latency_ms": None}}
    assert cost_figures(costs, {"architecture": ARCHS[0]})["onnx_latency_ms"] != cost_figures(
        costs, {"architecture": ARCHS[0]})["onnx_latency_ms"]  # NaN where ONNX Runtime was not there
    assert cost_figures(None, {"architecture": ARCHS[0]}) == {}
    with pytest.raises(KeyError, match="no cost measured"):
        cost_figures(costs, {"architecture": ARCHS[1], "min_size": 96, "max_size": 96})


@pytest.fixture(scope="module")
def measured_and_not(tiny_demo, tmp_path_factory, ray_local):
    """The same seeded sweep twice: cost.measure on, then off."""
    out = {}
    for measure in (True, False):
        root = tmp_path_factory.mktemp(f"costs_{measure}")
        cfg = SweepConfig.model_validate(tiny_sweep(
            "c", tiny_demo, root / "runs", training={"epochs": 1, "seed": 0},
            cost={"measure": measure, "repeats": 3, "warmup": 1, "onnx": False}))
        lines: list[str] = []
        rows = run_sweep(cfg, echo=lambda line, lines=lines: lines.append(str(line)))
        out[measure] = (rows, root / "runs" / "c", lines)
    return out


def test_each_result_and_ranking_row_carries_its_models_figures(measured_and_not):
    rows, run, lines = measured_and_not[True]
    costs = json.loads((run / "costs.json").read_text())
    (key,) = costs
    assert key == _key(TINY_MODEL["architecture"], 96)
    figures = costs[key]
    assert (figures["threads"], figures["repeats"], figures["warmup"], figures["onnx_latency_ms"]) == (1, 3, 1, None)
    assert any(line.startswith("cost.measure: 1 model structure to time") for line in lines), lines
    for result in run.glob("*/result.json"):
        for line in result.read_text().splitlines():
            reported = json.loads(line)
            assert reported["latency_ms"] == figures["latency_ms"] and reported["params"] == figures["params"]
    table = pq.read_table(run / "ranking.parquet").to_pylist()
    assert [r["untrained_latency_ms"] for r in table] == [figures["latency_ms"]] * 2
    # both kept their checkpoints (keep_trials 5), so both were timed trained after the sweep, on
    # the val images, and the ranking's latency is that
    trained = json.loads((run / "trained_costs.json").read_text())
    assert [r["trained_latency_ms"] for r in table] == [trained[r["trial"]]["latency_ms"] for r in table]
    assert [(r["latency_from"], r["latency_ms"]) for r in table] == [
        ("trained", r["trained_latency_ms"]) if r["trained_latency_ms"] <= figures["latency_ms"]
        else ("untrained", figures["latency_ms"]) for r in table]
    assert {t: (f["weights"], f["epoch"], f["repeats"]) for t, f in trained.items()} == {
        r["trial"]: ("trained", 1, 3) for r in table}
    # finishing the sweep again (a resume) times nothing again
    again: list[str] = []
    view = load_sweep(str(run))
    assert time_trained_models(view, view.manifest(), echo=again.append) == trained and again == []
    # TensorBoard: each trial's figures at step 0, and the sweep's HParams experiment lists them
    from tensorboard.backend.event_processing import event_accumulator as ea

    for row in table:
        acc = ea.EventAccumulator(row["path"], size_guidance={ea.SCALARS: 0})
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("cost/latency_ms")] == [(0, pytest.approx(figures["latency_ms"]))]
        assert acc.Scalars("cost/params")[0].value == pytest.approx(figures["params"], rel=1e-6)  # float32 in events
    write_hparams_experiment(load_sweep(str(run)))
    (experiment,) = run.glob("*.boxtune-hparams")
    assert b"cost/latency_ms" in experiment.read_bytes() and b"cost/file_mb" in experiment.read_bytes()
    assert [r["file_mb"] for r in table] == [figures["file_mb"]] * 2


def test_with_measuring_off_the_same_trials_end_in_the_same_ranking(measured_and_not):
    (on, _, _), (off, run_off, _) = measured_and_not[True], measured_and_not[False]
    assert not (run_off / "costs.json").exists()
    assert not set(COST_COLUMNS) & set(pq.read_table(run_off / "ranking.parquet").column_names)
    keep = ("rank", "number", "status", "best_epoch", "epochs", "AP", "AR100", "score")
    assert [{k: r[k] for k in keep} for r in on] == [{k: r[k] for k in keep} for r in off]


def test_the_export_records_its_models_figures(measured_and_not, tmp_path):
    _, run, _ = measured_and_not[True]
    _, meta = export_run(str(run), tmp_path / "best.pt")
    costs = json.loads((run / "costs.json").read_text())
    assert meta["cost"] == costs[_key(TINY_MODEL["architecture"], 96)]
    _, unmeasured = export_run(str(measured_and_not[False][1]), tmp_path / "plain.pt")
    assert "cost" not in unmeasured


def test_export_pick_chooses_from_the_measured_ranking_and_says_why(measured_and_not, tmp_path):
    from trainables.errors import BoxtuneError
    from tune.ship.export import chosen_line

    rows, run, _ = measured_and_not[True]
    latency = rows[0]["latency_ms"]
    # one model structure, but each trial timed trained: the fastest of those tied with the best wins
    tied = [rows[0], *(r for r in rows[1:] if r["distinguishable"] is False)]
    fastest = min(tied, key=lambda r: r["latency_ms"])
    _, meta = export_run(str(run), tmp_path / "tied.pt", pick="fastest-tied")
    assert meta["trial_id"] == fastest["trial"] and meta["pick"]["rule"] == "fastest-tied"
    assert (meta["pick"]["latency_ms"], meta["pick"]["latency_from"]) == (fastest["latency_ms"], fastest["latency_from"])
    assert meta["pick"]["tied_with_best"] == [r["trial"] for r in tied]
    assert chosen_line(meta).endswith(f"; --pick fastest-tied: {meta['pick']['reason']}")
    _, meta = export_run(str(run), tmp_path / "fast.pt", pick=f"max-latency={latency * 2:.3f}")
    assert meta["trial_id"] == rows[0]["trial"] and meta["pick"]["max_latency_ms"] == pytest.approx(latency * 2, abs=1e-3)
    quickest = min(rows, key=lambda r: r["latency_ms"])
    with pytest.raises(BoxtuneError, match=rf"no trial runs within 0.001 ms; the fastest is trial {quickest['trial']} "
                                           rf"at {quickest['latency_ms']:.1f} ms"):
        export_run(str(run), tmp_path / "none.pt", pick="max-latency=0.001")
    assert not (tmp_path / "none.pt").exists()
    with pytest.raises(BoxtuneError, match="has no latency figures: the sweep ran without cost.measure"):
        export_run(str(measured_and_not[False][1]), tmp_path / "plain_pick.pt", pick="fastest-tied")
