"""The README's final-model steps, end to end on the suite's shared sweep: sweep, best-config,
a longer `boxtune train`, export of the train folder, predict through that export; and the train
folder as report and export read it."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from shared_run import EPOCHS

from tune.cli import _train_threads, main
from tune.ship.export import export_best


@pytest.fixture(scope="module")
def final(shared_run, tiny_demo, tmp_path_factory):
    """(sweep folder, train folder, what `train` printed): the README's steps up to the longer run."""
    work = tmp_path_factory.mktemp("final")
    best = work / "best.yaml"
    assert main(["report", str(shared_run.run), "--best-config", str(best)]) == 0
    out = work / "final"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(best), "--out", str(out), "--epochs", str(EPOCHS + 1), "--device", "cpu"]) == 0
    return shared_run.run, out, printed.getvalue()


def test_train_states_and_records_its_threads(final):
    _, out, printed = final
    assert "torch threads: 1 (the config's threads); AP depends on the count" in printed  # best.yaml: resources.cpu
    assert json.loads((out / "train.json").read_text())["threads"] == 1
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["threads"] for m in epochs] == [1] * (EPOCHS + 1)


def test_train_threads_default_to_the_cpus_the_process_may_use():
    assert _train_threads(None, None) == (len(os.sched_getaffinity(0)), "the CPUs this process may use")
    assert _train_threads(None, 3) == (3, "the config's threads") and _train_threads(2, 3) == (2, "--threads")


def test_export_and_predict_the_final_model(final, tiny_demo, tmp_path, capsys):
    run, out, _ = final
    model = tmp_path / "final.pt"
    assert main(["export", str(out), "--out", str(model)]) == 0
    line = capsys.readouterr().out.strip()
    ckpt = torch.load(model, weights_only=True)
    best = json.loads((out / "best.json").read_text())
    assert ckpt["epoch"] == best["epoch"] and ckpt["train_run"] == str(out.resolve())
    assert ckpt["metrics"]["AP"] == best["metrics"]["AP"]
    # the same metadata as a sweep's winner: the same keys, the ranking's too, with a real interval
    winner = torch.load(export_best(str(run), tmp_path / "winner.pt"), weights_only=True)
    assert set(ckpt) == set(winner) and set(ckpt["ranking"]) == set(winner["ranking"])
    ranking = ckpt["ranking"]
    assert (ranking["rank"], ranking["trials"], ranking["objective"]) == (1, 1, "AP")
    assert ranking["value"] == best["metrics"]["AP"] and ranking["val_images"] == 6 and ranking["resamples"] == 1000
    assert 0 <= ranking["ci_low"] <= ranking["value"] <= ranking["ci_high"] <= 1
    assert line == (f"exported {model}: boxtune train run {out.resolve()}, epoch {best['epoch']}: val AP "
                    f"{best['metrics']['AP']:.4f} (95% interval {ranking['ci_low']:.3f}..{ranking['ci_high']:.3f} "
                    f"on 6 images); test split: -")
    # predict reads it; at threshold 0 the model's own filter lets every detection through
    preds = tmp_path / "preds.json"
    assert main(["predict", str(model), str(tiny_demo.parent / "images"), "--out", str(preds),
                 "--score-threshold", "0", "--device", "cpu"]) == 0
    found = json.loads(preds.read_text())
    assert found and {r["category_id"] for r in found} <= {5, 17, 42}
    assert min(r["score"] for r in found) < 0.05  # under Faster R-CNN's own default filter


def test_report_of_a_train_folder(final, capsys):
    _, out, _ = final
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    best = json.loads((out / "best.json").read_text())
    lines = text.splitlines()
    assert lines[0] == f"boxtune train run {out.resolve()}: {EPOCHS + 1} epochs"
    assert lines[1].split() == ["epoch", "loss", "AP", "AP50", "AR100", "lr", "images_per_s"]
    assert [int(ln.split()[0]) for ln in lines[2:2 + EPOCHS + 1]] == list(range(1, EPOCHS + 2))
    assert f"best epoch {best['epoch']} of {EPOCHS + 1} by AP on val: {best['metrics']['AP']:.4f} (95% interval " in text
    assert "torch threads: 1 (AP depends on the count)" in text and "test split: - " in text
    assert main(["report", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["best_epoch"] == best["epoch"] and len(data["epochs"]) == EPOCHS + 1
    assert data["ranking"]["ci_low"] <= data["ranking"]["value"] <= data["ranking"]["ci_high"]
    assert not math.isnan(data["ranking"]["ci_low"])
