"""The one ranking key: parsing search.metric, its errors, the folded score and the best epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from trainables.errors import ConfigError
from trainables.objective import (
    NAN_SCORE,
    best_epoch,
    check_measurable,
    class_metrics,
    epoch_summary,
    fold_score,
    parse_objective,
)
from tune.config import SweepConfig, TrainConfig, load_config


@dataclass
class _Class:
    name: str
    dataset_id: int


@dataclass
class _Record:
    category_ids: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray


CLASSES = [_Class("raccoon", 5), _Class("red panda", 17)]


def _val(boxes):
    """Records from (category id, area px^2, crowd) triples, one per image."""
    return [_Record(np.array([c]), np.array([z]), np.array([a], dtype=np.float64)) for c, a, z in boxes]


@pytest.mark.parametrize("spec, label, keys", [
    ("AP", "AP", ("AP",)),
    ("APs", "APs", ("APs",)),
    ("AP[raccoon]", "AP[raccoon]", ("AP[raccoon]",)),
    ("AP50[red panda]", "AP50[red panda]", ("AP50[red panda]",)),
    ({"AP": 0.9, "AP50": 0.1}, "0.9*AP + 0.1*AP50", ("AP", "AP50")),
])
def test_parse(spec, label, keys):
    objective = parse_objective(spec)
    assert objective.label == label and objective.keys == keys


def test_value_and_mix():
    metrics = {"AP": 0.5, "AP50": 0.8, "AR100": 0.6, "AP[raccoon]": 0.25}
    assert parse_objective({"AP": 0.9, "AP50": 0.1}).value(metrics) == pytest.approx(0.9 * 0.5 + 0.1 * 0.8, abs=1e-15)
    assert parse_objective("AP[raccoon]").value(metrics) == 0.25
    assert math.isnan(parse_objective("APs").value(metrics))  # missing: NaN, not 0
    assert math.isnan(parse_objective({"AP": 1, "APl": 1}).value({**metrics, "APl": math.nan}))


@pytest.mark.parametrize("spec, words", [
    ("APx", ["search.metric", "'APx'", "did you mean 'AP'", "AP50"]),
    ("ap", ["search.metric", "unknown metric 'ap'"]),
    ("APs[raccoon]", ["search.metric", "'APs' has no per-class form"]),
    ({"AP": 0.9, "AR10": 0.1}, ["search.metric", "'AR10'", "did you mean 'AR100'"]),
    ({"AP": 0.0}, ["search.metric", "weight of 'AP' must be a finite number > 0"]),
    ({"AP": float("nan")}, ["weight of 'AP'"]),
    ({}, ["search.metric", "empty mapping"]),
    (3, ["search.metric", "expected a metric name"]),
])
def test_parse_errors_name_key_and_term(spec, words):
    with pytest.raises(ConfigError) as err:
        parse_objective(spec)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_config_load_validates_the_metric():
    cfg = load_config(None, SweepConfig, data={"data": {"path": "x"}, "search": {"metric": {"AP": 0.9, "AP50": 0.1}}})
    assert cfg.search.metric == {"AP": 0.9, "AP50": 0.1} and cfg.report.test_top == 1
    with pytest.raises(ConfigError, match=r"search\.metric: unknown metric 'AP95' \(did you mean 'AP75'\?\)"):
        load_config(None, SweepConfig, data={"data": {"path": "x"}, "search": {"metric": "AP95"}})
    with pytest.raises(ConfigError, match=r"report\.test_top"):
        load_config(None, SweepConfig, data={"data": {"path": "x"}, "report": {"test_top": -1}})
    assert load_config(None, TrainConfig, data={"data": {"path": "x"}, "metric": "AR100"}).metric == "AR100"
    with pytest.raises(ConfigError, match=r"\bmetric: unknown metric 'AR'"):
        load_config(None, TrainConfig, data={"data": {"path": "x"}, "metric": "AR"})


def test_fold_orders_by_objective_then_ar100():
    # (objective, AR100) pairs in lexicographic order: the folded scores sort the same way
    pairs = [(0.0, 0.0), (0.0, 0.3), (0.0, 1.0), (0.000001, 0.0), (0.4, 0.2), (0.4, 0.2000001), (0.4, 0.9),
             (0.400001, 0.0), (0.5, 0.0), (1.0, 0.0), (1.0, 1.0)]
    scores = [fold_score(o, a) for o, a in pairs]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert fold_score(0.4, 0.9) - fold_score(0.4, 0.0) == pytest.approx(0.9e-7, abs=1e-15)
    # objectives closer than the 1e-6 resolution are equal; AR100 decides
    assert fold_score(0.4000001, 0.1) < fold_score(0.4000002, 0.2)
    assert fold_score(0.4000004, 0.2) > fold_score(0.4000001, 0.1)


def test_nan_objective_scores_the_finite_sentinel():
    assert fold_score(math.nan, 0.5) == NAN_SCORE == -1.0
    assert fold_score(0.0, math.nan) == 0.0  # a NaN AR100 adds nothing
    assert parse_objective("APs").score({"AP": 0.3, "APs": math.nan, "AR100": 0.2}) == -1.0
    assert fold_score(0.0, 0.0) > NAN_SCORE


def test_best_epoch_by_score_latest_of_equal():
    objective = parse_objective("AP50")
    history = [{"epoch": 1, "AP": 0.1, "AP50": 0.3, "AR100": 0.2},
               {"epoch": 2, "AP": 0.3, "AP50": 0.2, "AR100": 0.4},  # best AP, not best AP50
               {"epoch": 3, "AP": 0.2, "AP50": 0.3, "AR100": 0.1},  # ties epoch 1 on AP50, lower AR100
               {"epoch": 4, "AP": 0.2, "AP50": 0.3, "AR100": 0.2}]  # equal to epoch 1 in every way
    assert best_epoch(history, objective)["epoch"] == 4  # as Ray keeps: the later of equal scores
    assert best_epoch(history)["epoch"] == 2  # AP by default
    for row in history:
        row["score"] = objective.score(row)
    summary = epoch_summary(objective, history[-1], history)
    assert summary == {"objective": 0.3, "score": fold_score(0.3, 0.2), "best_score": fold_score(0.3, 0.2),
                       "best_objective": 0.3, "best_epoch": 4, "best_AP": 0.2, "best_AR100": 0.2}
    assert best_epoch([]) is None


def test_class_metrics_keys():
    per_class = {5: {"AP": 0.5, "AP50": 0.7, "AP75": 0.4, "AR100": 0.6}, 17: {"AP": math.nan, "AP50": math.nan,
                                                                              "AP75": math.nan, "AR100": math.nan}}
    out = class_metrics(per_class, CLASSES, parse_objective("AP50[raccoon]"))
    assert list(out) == ["AP[raccoon]", "AP50[raccoon]", "AR100[raccoon]", "AP[red panda]", "AR100[red panda]"]
    assert out["AP50[raccoon]"] == 0.7 and math.isnan(out["AP[red panda]"])


def test_measurable_on_val():
    small, medium, large = 20.0**2, 50.0**2, 100.0**2
    val = _val([(5, medium, False), (17, large, False), (5, small, True)])  # the small box is a crowd region
    for ok in ("AP", "AR100", "APm", "APl", "AP[raccoon]", {"AP": 1, "AP75[red panda]": 1}):
        check_measurable(parse_objective(ok), val, CLASSES)
    with pytest.raises(ConfigError, match=r"search\.metric: APs cannot be measured: the val split has no box "
                                          r"with area in \[0, 1024\] px\^2"):
        check_measurable(parse_objective("APs"), val, CLASSES)
    # COCO's range bounds are inclusive: a box of exactly 32^2 px^2 is small (and medium)
    check_measurable(parse_objective("APs"), _val([(5, 32.0**2, False)]), CLASSES)
    with pytest.raises(ConfigError, match=r"AP\[racoon\]'?: unknown class 'racoon' \(did you mean 'raccoon'\?\); "
                                          r"classes: raccoon, red panda"):
        check_measurable(parse_objective("AP[racoon]"), val, CLASSES)
    with pytest.raises(ConfigError, match=r"AP\[red panda\] cannot be measured: the val split has no box of class"):
        check_measurable(parse_objective("AP[red panda]"), _val([(5, medium, False), (17, small, True)]), CLASSES)
    with pytest.raises(ConfigError, match=r"^metric: AP cannot be measured"):
        check_measurable(parse_objective("AP", key="metric"), [], CLASSES)


@pytest.mark.parametrize("metric, message", [
    ("APl", r"search\.metric: APl cannot be measured: the val split has no box with area in \[9216, 1e\+10\] px\^2"),
    ("AP[hexagon]", r"search\.metric: 'AP\[hexagon\]': unknown class 'hexagon'; classes: circle, square, triangle"),
])
def test_unmeasurable_objective_fails_before_ray(tmp_path, tiny_demo, metric, message):
    from conftest import TINY_MODEL

    from tune.workflow import run_sweep

    cfg = SweepConfig.model_validate({
        "name": "unmeasurable", "data": {"path": str(tiny_demo), "val_fraction": 0.25}, "model": TINY_MODEL,
        "training": {"epochs": 1}, "search": {"space": {"lr": 0.01}, "num_trials": 1, "metric": metric},
        "storage": str(tmp_path / "runs")})
    with pytest.raises(ConfigError, match=message):
        run_sweep(cfg, echo=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # refused before the run folder (and Ray) exist


# --- several objectives --------------------------------------------------------------------------

def test_a_list_is_one_accuracy_objective_and_the_costs_beside_it():
    from trainables.objective import accuracy_metric, cost_objectives

    spec = [{"AP": 0.9, "AP50": 0.1}, "latency_ms", "params"]
    assert parse_objective(spec).label == "0.9*AP + 0.1*AP50"  # what ranks, stops early and picks the best epoch
    assert cost_objectives(spec) == ("latency_ms", "params") and cost_objectives("AP") == ()
    assert accuracy_metric(spec) == {"AP": 0.9, "AP50": 0.1} and accuracy_metric("AP50") == "AP50"


@pytest.mark.parametrize("spec, message", [
    (["latency_ms"], r"a list needs exactly one accuracy objective .* its accuracy objectives: none"),
    (["AP"], r"a list of one objective: write it without the list \(search.metric: AP\)"),
    (["AP", "AP50", "params"], r"a list needs exactly one accuracy objective .* its accuracy objectives: 'AP', 'AP50'"),
    (["AP", "latency_ms", "latency_ms"], r"latency_ms given more than once"),
    (["AP", "lattency_ms"], r"unknown objective 'lattency_ms' \(did you mean 'latency_ms'\?\)"),
    ("latency_ms", r"latency_ms is what a model costs to run, not an accuracy: .* \[AP, latency_ms\]"),
])
def test_a_bad_list_is_refused_naming_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=r"^search\.metric: " + message):
        parse_objective(spec)


@pytest.mark.parametrize("search, cost, message", [
    ({"metric": ["AP", "latency_ms"]}, {"measure": False},
     r"search.metric names latency_ms, which only cost.measure measures; remove cost.measure: false"),
    ({"metric": ["AP", "onnx_latency_ms"]}, {"onnx": False}, r"onnx_latency_ms, which cost.onnx: false leaves unmeasured"),
    ({"metric": ["AP", "latency_ms"], "sampler": "cmaes"}, {},
     r"search.sampler: cmaes optimises one objective, and search.metric names 2; use one of tpe, random, gp, qmc"),
    ({"constraints": {"latncy_ms": {"max": 30}}}, {}, r"search.constraints: 'latncy_ms' cannot be limited \(did you mean 'latency_ms'\?\)"),
    ({"constraints": {"latency_ms": {}}}, {}, r"search.constraints.latency_ms: give max, min or both"),
    ({"constraints": {"params": {"min": 5, "max": 1}}}, {}, r"min \(5\) is above max \(1\): no trial could meet it"),
    ({"constraints": {"latency_ms": {"max": float("nan")}}}, {}, r"search.constraints.latency_ms.max: Input should be a finite number"),
])
def test_the_config_refuses_what_several_objectives_cannot_do(search, cost, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, SweepConfig, data={"data": {"path": "x"}, "search": search, "cost": cost})


def test_a_named_cost_turns_measuring_on():
    for search in ({"metric": ["AP", "file_mb"]}, {"constraints": {"latency_ms": {"max": 30}}}):
        cfg = load_config(None, SweepConfig, data={"data": {"path": "x"}, "search": search})
        assert cfg.cost.measure is True
    assert load_config(None, SweepConfig, data={"data": {"path": "x"}}).cost.measure is False
    cfg = load_config(None, SweepConfig, data={"data": {"path": "x"}, "search": {
        "metric": ["AP", "latency_ms"], "constraints": {"params": {"max": 5e6}, "latency_ms": {"max": 30}}}})
    assert cfg.search.costs == ("latency_ms", "params")
    with pytest.raises(ConfigError, match=r"several objectives .* are for a sweep.s search.metric; give the accuracy objective alone here, e.g. AP"):
        load_config(None, TrainConfig, data={"data": {"path": "x"}, "metric": ["AP", "latency_ms"]})
