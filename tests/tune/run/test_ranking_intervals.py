"""The ranking's intervals on the suite's shared sweep: stored detections, the interval columns in
``ranking.parquet``, the report, the export's metadata and the live end-of-trial lines agree.

The shared sweep's tiny random-init models score AP near 0, so most trials cannot be told apart:
these tests check that every place says the same, and that each number is the one recomputed
here from the stored detections.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from shared_run import result_rows, trial_dirs

from trainables.coco_eval import evaluate_detections
from trainables.detections import read_detections
from trainables.files import detections_file
from trainables.intervals import resample_counts
from trainables.objective import parse_objective
from tune.cli import main
from tune.run import load_sweep, rank_trials
from tune.run.intervals import (
    BEATS,
    RESAMPLES,
    SEED,
    interval,
    objective_samples,
    run_objective,
    trial_matches,
    val_ground_truth,
)


@pytest.fixture(scope="module")
def ranked(shared_run):
    view = load_sweep(str(shared_run.run))
    return view, rank_trials(view)


def test_every_reported_epoch_stored_its_detections_and_they_give_its_numbers(shared_run):
    view = load_sweep(str(shared_run.run))
    manifest = view.manifest()
    gt = val_ground_truth(manifest)
    checked = 0
    for folder in trial_dirs(shared_run.run):
        for row in result_rows(folder):
            path = folder / detections_file(row["epoch"])
            assert path.is_file(), path  # trials whose checkpoints retention deleted keep them too
            detections = read_detections(path)
            stats = evaluate_detections(gt, detections, label_to_dataset_id=manifest.label_to_dataset_id)
            assert (stats["AP"], stats["AR100"]) == (row["AP"], row["AR100"])  # exactly the reported numbers
            # and the interval the epoch reported (what a rung's evidence rule reads) is the bootstrap of them
            low, high = interval(run_objective(gt, detections, manifest, view.objective))
            assert (row["objective_low"], row["objective_high"]) == pytest.approx((low, high), abs=1e-12, nan_ok=True)
            checked += 1
    assert checked >= 5


def test_detections_outlive_checkpoint_retention(shared_run):
    retention = json.loads((shared_run.run / "retention.json").read_text())
    assert retention["deleted"]  # keep_trials 2 of 4 reporting trials: some lost their checkpoints
    for trial, folder in retention["trial_dirs"].items():
        if trial in retention["deleted"]:
            assert not list((shared_run.run / folder).glob("checkpoint_*"))
            assert list((shared_run.run / folder / "detections").glob("epoch_*.parquet"))


def test_ranking_intervals_are_the_paired_bootstrap_of_the_stored_detections(shared_run, ranked):
    view, rows = ranked
    manifest = view.manifest()
    gt = val_ground_truth(manifest)
    counts = resample_counts(len(gt.getImgIds()), RESAMPLES, SEED)
    objective = parse_objective(view.config.search.metric)
    dirs = {t.trial_id: t.dir_name for t in view.trials}
    with_epoch = [r for r in rows if r["best_epoch"] > 0]
    samples = {}
    for row in with_epoch:
        detections = read_detections(shared_run.run / dirs[row["trial"]] / detections_file(row["best_epoch"]))
        samples[row["trial"]] = objective_samples(objective, trial_matches(gt, detections, manifest).metrics(counts),
                                                  manifest.classes)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(interval(samples[row["trial"]]), abs=1e-12)
        assert row["ci_low"] <= row["ci_high"]
    leader = with_epoch[0]
    assert math.isnan(leader["leader_beats"]) and leader["distinguishable"] is False  # not from itself
    for row in with_epoch[1:]:
        beaten = float(np.mean(samples[leader["trial"]] > samples[row["trial"]]))
        assert row["leader_beats"] == pytest.approx(beaten, abs=1e-12)
        assert row["distinguishable"] == (beaten >= BEATS)
    for row in rows:
        if row["best_epoch"] == 0:  # the diverging trial: nothing to measure
            assert math.isnan(row["ci_low"]) and row["distinguishable"] is None
    table = pq.read_table(shared_run.run / "ranking.parquet").to_pylist()
    for stored, row in zip(table, rows, strict=True):
        assert stored["trial"] == row["trial"] and stored["distinguishable"] == row["distinguishable"]
        assert stored["ci_low"] == pytest.approx(row["ci_low"], nan_ok=True)


def test_the_report_shows_intervals_and_says_which_trials_cannot_be_told_apart(shared_run, ranked, capsys):
    view, rows = ranked
    assert main(["report", str(shared_run.run)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = lines[0].split()
    assert header[:6] == ["rank", "trial", "status", "AP", "95%CI", "vs_leader"]
    assert max(len(line) for line in lines[: len(rows) + 1]) <= 120
    first = lines[1].split()
    assert first[5] == "leader" and first[4] == f"{rows[0]['ci_low']:.3f}..{rows[0]['ci_high']:.3f}"
    tied = [r["rank"] for r in rows if r["distinguishable"] is False]
    images = len(view.manifest().records("val"))
    if len(tied) == len([r for r in rows if r["distinguishable"] is not None]):  # every trial with an interval
        assert f"no trial can be told apart from the leader on this val set ({images} images)" in text
    else:
        assert f"cannot be told apart on this val set ({images} images)" in text
    assert main(["report", str(shared_run.run), "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()[0].split()
    assert {"AP50", "AP75", "AR1", "AR10", "score", "best_epoch", "epochs"} <= set(wide)


def test_the_export_records_the_interval_and_the_mark(shared_run, ranked, tmp_path):
    view, rows = ranked
    kept = json.loads((shared_run.run / "retention.json").read_text())["kept"]
    row = next(r for r in rows if r["trial"] in kept)
    path = tmp_path / "model.pt"
    assert main(["export", str(shared_run.run), "--out", str(path), "--trial", row["trial"]]) == 0
    ranking = torch.load(path, weights_only=True)["ranking"]
    assert ranking["rank"] == row["rank"] and ranking["objective"] == "AP"
    assert (ranking["ci_low"], ranking["ci_high"]) == (row["ci_low"], row["ci_high"])
    assert ranking["distinguishable"] == row["distinguishable"]
    assert ranking["leader"] == rows[0]["trial"] and ranking["val_images"] == len(view.manifest().records("val"))
    assert ranking["not_distinguishable_from_leader"] == [r["trial"] for r in rows if r["distinguishable"] is False]


def test_the_live_line_says_whether_a_trial_is_within_noise_of_the_sweep_best(shared_run):
    ended = [line for line in shared_run.stdout.splitlines() if line.startswith("-- ") and "sweep best" in line]
    assert ended
    marked = [line for line in ended if line.endswith(("within noise)", "told apart)"))]
    # the sweep best's own line has no mark; another finished trial's has, once its detections are in storage
    assert marked, ended
    for line in marked:
        share = int(line.rsplit("ahead in ", 1)[1].split("%")[0])
        assert line.endswith("told apart)") == (share >= 95)
