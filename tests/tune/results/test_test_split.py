"""The ranked model is the shipped one, and the test split is evaluated once, at the end, beside val.

One tiny sweep (2 trials x 2 epochs, ASHA, a weighted objective) on a manifest with a test split;
every check reads its results.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from conftest import TINY_MODEL
from torch.utils.data import DataLoader

from trainables.augment import build_eval_transforms
from trainables.coco_eval import build_coco_gt, evaluate_detections
from trainables.data import DetectionDataset, Manifest, build_manifest, collate_detection
from trainables.objective import fold_score, parse_objective
from tune.cli import main
from tune.config import SweepConfig
from tune.run import load_sweep, rank_trials
from tune.run.layout import RANKING_FILE, TEST_RESULTS_FILE
from tune.ship.export import export_best
from tune.workflow import run_sweep

METRIC = {"AP": 0.9, "AP50": 0.1}
N_TEST = 6


@pytest.fixture(scope="module")
def split_manifest(tiny_demo, tmp_path_factory):
    """The tiny demo (18 train / 6 val) with 6 train images moved to a test split: 12 / 6 / 6."""
    manifest = build_manifest(tiny_demo, val_fraction=0.25, seed=0)
    splits = manifest.table.column("split").to_pylist()
    train_rows = [i for i, s in enumerate(splits) if s == "train"]
    for i in train_rows[::2][:N_TEST]:
        splits[i] = "test"
    column = manifest.table.schema.get_field_index("split")
    table = manifest.table.set_column(column, manifest.table.schema.field(column), pa.array(splits, pa.string()))
    path = tmp_path_factory.mktemp("split_manifest") / "manifest.parquet"
    Manifest(table).write(path)
    return path


@pytest.fixture(scope="module")
def tested_sweep(split_manifest, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("test_split")
    cfg = SweepConfig.model_validate({
        "name": "tested",
        "data": {"path": str(split_manifest)},
        "model": TINY_MODEL,
        "training": {"epochs": 2, "seed": 0},
        "search": {"space": {"optimizer": "sgd", "lr": {"loguniform": [0.005, 0.03]}, "batch_size": 4},
                   "num_trials": 2, "sampler": "random", "seed": 1, "metric": METRIC},
        "scheduler": {"name": "asha", "grace_period": 1},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "storage": str(tmp / "runs"),
        "retries": 0,
        "report": {"test_top": 2},
    })
    lines: list[str] = []
    rows = run_sweep(cfg, echo=lines.append)
    return rows, tmp / "runs" / "tested", lines


def _result_rows(trial_path):
    return [json.loads(line) for line in open(f"{trial_path}/result.json") if line.strip()]


def test_every_epoch_reports_the_objective_and_score(tested_sweep):
    rows, run, _ = tested_sweep
    objective = parse_objective(METRIC)
    for row in rows:
        history = _result_rows(row["path"])
        assert [int(h["epoch"]) for h in history] == list(range(1, len(history) + 1))
        for h in history:
            assert h["objective"] == pytest.approx(0.9 * h["AP"] + 0.1 * h["AP50"], abs=1e-15)
            assert h["score"] == fold_score(h["objective"], h["AR100"])
            assert math.isfinite(h["score"]) and math.isfinite(h["best_score"])
            # per-class numbers, by the manifest's class names
            assert {k for k in h if k.startswith(("AP[", "AR100["))} == {
                f"{s}[{c}]" for s in ("AP", "AR100") for c in ("circle", "square", "triangle")}
            # the 12 train images trained, no test image did: images/s x seconds = images seen
            assert h["images_per_s"] * h["train_s"] == pytest.approx(12, abs=1e-6)
        so_far = []
        for h in history:
            so_far.append(h)
            best = max(so_far, key=lambda r: (r["score"], r["epoch"]))
            assert h["best_epoch"] == best["epoch"] and h["best_score"] == best["score"]
            assert h["best_AP"] == best["AP"] and h["best_AR100"] == best["AR100"]
        assert row["score"] == history[-1]["best_score"] and row["best_epoch"] == history[-1]["best_epoch"]
        assert row["objective"] == pytest.approx(objective.value(history[row["best_epoch"] - 1]), abs=0)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_test_split_evaluated_once_and_shown_beside_val(tested_sweep):
    rows, run, lines = tested_sweep
    results = json.loads((run / TEST_RESULTS_FILE).read_text())
    assert results["split"] == "test" and results["images"] == N_TEST and results["metric"] == "0.9*AP + 0.1*AP50"
    assert sorted(results["trials"]) == sorted(r["trial"] for r in rows)  # test_top: 2
    for row in rows:
        tested = results["trials"][row["trial"]]
        assert tested["epoch"] == row["best_epoch"] and tested["rank"] == row["rank"]
        assert row["test_AP"] == tested["metrics"]["AP"] and row["test_AR100"] == tested["metrics"]["AR100"]
        assert row["test_epoch"] == row["best_epoch"]
        assert 0.0 <= row["test_AP"] <= 1.0
    assert sum("on 6 test images" in line for line in lines) == 2
    # ranking.parquet carries the same test columns
    table = pq.read_table(run / RANKING_FILE).to_pylist()
    assert [(t["trial"], t["test_AP"], t["test_AR100"]) for t in table] == [
        (r["trial"], r["test_AP"], r["test_AR100"]) for r in rows]
    # the report labels them, and says what ranks
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", str(run), "--per-class"]) == 0
    text = out.getvalue()
    header = text.splitlines()[0].split()
    # the default table: the objective first, with its interval and standing; AP beside it; test AP
    assert header == ["rank", "trial", "status", "objective", "95%CI", "vs_leader", "AP", "AR100", "epoch", "test_AP",
                      "lr"]  # then the hyperparameters that varied, as many as fit
    wide = io.StringIO()
    with redirect_stdout(wide):
        assert main(["report", str(run), "--wide"]) == 0
    assert {"test_AP", "test_AR100", "score", "test_ci_low", "test_ci_high"} <= set(wide.getvalue().splitlines()[0].split())
    assert "ranked by 0.9*AP + 0.1*AP50 of each trial's best epoch on val (ties: AR100)" in text
    assert "held-out test split (6 images)" in text and "optimistic" not in text
    per_class = text.split("per class (val; test_* where evaluated on the test split):\n")[1].splitlines()
    assert per_class[0].split() == ["rank", "trial", "epoch", "class", "AP", "AP_95%CI", "AP50", "AP50_95%CI", "AR100",
                                    "AR100_95%CI", "test_AP", "test_AR100"]
    best = _result_rows(rows[0]["path"])[rows[0]["best_epoch"] - 1]
    circle = next(line.split() for line in per_class if " circle " in line)
    assert float(circle[4]) == pytest.approx(best["AP[circle]"], abs=5e-5)  # printed to 4 decimals


def test_export_is_the_ranked_epoch_and_test_numbers_are_reproducible(tested_sweep, split_manifest, tmp_path):
    rows, run, _ = tested_sweep
    path = export_best(str(run), tmp_path / "best.pt")
    ckpt = torch.load(path, weights_only=True)
    best_row = rows[0]
    history = _result_rows(best_row["path"])
    assert ckpt["trial_id"] == best_row["trial"] and ckpt["epoch"] == best_row["best_epoch"]
    ranked_epoch = history[best_row["best_epoch"] - 1]
    for key in ("AP", "AP50", "AR100", "objective", "score", "AP[circle]"):
        assert ckpt["metrics"][key] == pytest.approx(ranked_epoch[key], abs=0, nan_ok=True), key
    assert ckpt["metrics"]["score"] == best_row["score"]
    assert ckpt["test_images"] == N_TEST
    results = json.loads((run / TEST_RESULTS_FILE).read_text())["trials"][best_row["trial"]]["metrics"]
    assert sorted(ckpt["test_metrics"]) == sorted(f"test_{k}" for k in results)
    for key, value in results.items():
        assert ckpt["test_metrics"][f"test_{key}"] == pytest.approx(math.nan if value is None else value, abs=0,
                                                                   nan_ok=True), key

    # independent: the README's three lines, then evaluate_detections on the test records
    model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None,
                                         num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    model.roi_heads.score_thresh = ckpt["eval_score_threshold"]  # the filter its numbers were measured with
    from trainables.data import read_manifest

    manifest = read_manifest(split_manifest)
    test = [r for r in manifest.records() if r.split == "test"]
    loader = DataLoader(DetectionDataset(test, transforms=build_eval_transforms()), batch_size=4,
                        collate_fn=collate_detection)
    detections = {}
    with torch.inference_mode():
        for images, targets in loader:
            for target, out in zip(targets, model(images), strict=True):
                detections[int(target["image_id"])] = out
    gt = build_coco_gt(test, [(c.dataset_id, c.name) for c in manifest.classes])
    stats = evaluate_detections(gt, detections, label_to_dataset_id=manifest.label_to_dataset_id)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert stats[key] == pytest.approx(results[key], abs=1e-12, nan_ok=True), key


def test_without_test_split_the_report_says_val_is_optimistic(tested_sweep, tmp_path):
    from tune.results.report import sweep_notes

    rows, run, _ = tested_sweep
    view = load_sweep(str(run))
    assert view.has_test_split and rank_trials(view)[0]["trial"] == rows[0]["trial"]
    view.has_test_split, view.test_results = False, None
    notes = sweep_notes(view)
    assert any(n.startswith("no test split: val AP is optimistic") for n in notes)
    assert "test_AP" not in rank_trials(view)[0]


def test_train_evaluates_its_best_epoch_on_test(split_manifest, tmp_path):
    import yaml

    from tune.results.holdout import evaluate_state

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(split_manifest)}, "model": TINY_MODEL,
                                      "training": {"epochs": 2, "seed": 0}, "metric": "AR100",
                                      "hparams": {"lr": 0.01, "batch_size": 4}}))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["train", str(config), "--out", str(tmp_path / "out"), "--threads", "1", "--device", "cpu"]) == 0
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda m: (m["score"], m["epoch"]))
    assert all(m["objective"] == m["AR100"] for m in history)  # metric: AR100
    assert json.loads((tmp_path / "out" / "best.json").read_text())["epoch"] == best["epoch"]
    results = json.loads((tmp_path / "out" / TEST_RESULTS_FILE).read_text())
    assert results["epoch"] == best["epoch"] and results["images"] == N_TEST
    text = out.getvalue()
    assert f"test split ({N_TEST} images), epoch {best['epoch']}: test_AP {results['metrics']['AP']:.4f}" in text
    # the same numbers again from the checkpoint: the evaluation is deterministic and fp32
    from trainables.checkpoint import load_checkpoint
    from trainables.data import read_manifest

    state = load_checkpoint(tmp_path / "out" / "checkpoints" / f"epoch_{best['epoch']:04d}")
    test = [r for r in read_manifest(split_manifest).records() if r.split == "test"]
    again = evaluate_state(state, test)
    assert again["AP"] == results["metrics"]["AP"] and again["AR100"] == results["metrics"]["AR100"]
