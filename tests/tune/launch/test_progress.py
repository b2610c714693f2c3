"""The live sweep table: AP, AR100, best AP and the sampled hyperparameters, and a line per ended trial."""

from __future__ import annotations

import json
import re

import pytest
from shared_run import EPOCHS, result_rows, trial_dirs

from tune.launch.progress import ProgressTable
from tune.trial_config import format_hparams


@pytest.mark.parametrize(("config", "shown"), [
    ({"optimizer": "sgd", "lr": 0.012345, "momentum": 0.9}, "opt=sgd lr=0.0123 mom=0.9"),
    ({"lr": 3.0e-4, "hflip_p": 0.5, "freeze_depth": 2, "nesterov": True}, "lr=0.0003 hflip=0.5 freeze=2 nest=y"),
    ({"milestones": [6, 9], "my_knob": 1.23456}, "miles=6,9 my_knob=1.23"),
])
def test_hyperparameters_short_and_rounded(config, shown):
    assert format_hparams(config) == shown


def _table_rows(stdout: str) -> dict[tuple[str, int], list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[1] == "RUNNING" and re.fullmatch(r"\d+/\d+", cells[2]):
            rows[(cells[0], int(cells[2].split("/")[0]))] = cells
    return rows


def test_table_shows_ap_and_hyperparameters_of_every_epoch(shared_run):
    out = shared_run.stdout
    header = next(line for line in out.splitlines() if line.startswith("trial "))
    assert header.split()[:7] == ["trial", "status", "epoch", "AP", "AR100", "best", "AP"]
    assert header.rstrip().endswith("hyperparameters")
    rows = _table_rows(out)
    seen = 0
    for trial_dir in trial_dirs(shared_run.run):
        params = json.loads((trial_dir / "params.json").read_text())
        for result in result_rows(trial_dir):
            cells = rows[(result["trial_id"], result["epoch"])]
            assert cells[2] == f"{result['epoch']}/{EPOCHS}"
            assert float(cells[3]) == pytest.approx(result["AP"], abs=5e-4)
            assert float(cells[4]) == pytest.approx(result["AR100"], abs=5e-4)
            assert float(cells[5]) == pytest.approx(result["best_AP"], abs=5e-4)
            assert sorted(cells[-len(params):]) == sorted(format_hparams(params).split())
            seen += 1
    assert seen == len(rows) >= 4


def test_a_line_for_each_trial_that_ends(shared_run):
    ended = re.findall(r"^-- (\S+) (finished|stopped by ASHA|errored) after", shared_run.stdout, re.M)
    how = dict(ended)
    assert len(how) == len(ended)  # one line per trial
    assert [h for h in how.values() if h == "errored"] == ["errored"]  # the trial that diverges in epoch 1
    reported = [result_rows(d) for d in trial_dirs(shared_run.run)]
    reported = [rows for rows in reported if rows]
    assert len(how) == len(reported) + 1
    for rows in reported:
        assert how[rows[0]["trial_id"]] == ("finished" if len(rows) == EPOCHS else "stopped by ASHA")


def test_ray_checkpoint_chatter_goes_to_the_trial_log(shared_run):
    # the sweep's own Ray forwards worker output to the terminal (log_to_driver), so this is the real check
    assert "Checkpoint successfully created" not in shared_run.stdout + shared_run.stderr
    # nor Ray's notice that a new local Ray turned token authentication on, which it keeps
    assert "Token authentication is enabled" not in shared_run.stdout + shared_run.stderr
    logs = [d / "ray_train.log" for d in trial_dirs(shared_run.run) if result_rows(d)]
    assert logs and all("Checkpoint successfully created" in p.read_text() for p in logs)


def test_gpu_memory_column_appears_once_a_trial_reports_it(capsys):
    from types import SimpleNamespace

    table = ProgressTable(max_epochs=4)
    cpu = SimpleNamespace(trial_id="a_00000", config={"lr": 0.01})
    gpu = SimpleNamespace(trial_id="a_00001", config={"lr": 0.02})
    table.on_trial_result(0, [], cpu, {"epoch": 1, "AP": 0.1, "AR100": 0.2, "best_AP": 0.1, "best_score": 0.1})
    table.on_trial_result(0, [], gpu, {"epoch": 1, "AP": 0.3, "AR100": 0.4, "best_AP": 0.3, "best_score": 0.3,
                                       "gpu_mem_mib": 900.2, "gpu_reserved_mib": 1234.6})
    lines = capsys.readouterr().out.splitlines()
    assert "GPU MiB" not in lines[0] and "GPU MiB" in lines[2]
    assert lines[3].split()[5:9] == ["0.300", "0.300", "1235", "lr=0.02"]  # best AP, score, GPU MiB


def test_status_reads_peak_gpu_memory_from_the_history():
    from tune.cli import _peak_gpu_mib

    assert _peak_gpu_mib([{"epoch": 1, "AP": 0.1}]) is None  # a CPU trial
    # result tables fill epochs that lack a column with NaN
    assert _peak_gpu_mib([{"gpu_reserved_mib": float("nan")}, {"gpu_reserved_mib": 812.0}, {"gpu_reserved_mib": 640}]) == 812.0


def test_a_trials_end_line_gives_the_score_it_ranks_by(capsys):
    from types import SimpleNamespace

    for by_score, expected in ((False, "-- a_00000 finished after epoch 2/2: best AP 0.300 (sweep best 0.300, a_00000)"),
                               (True, "-- a_00000 finished after epoch 2/2: best AP 0.300, score 0.120 "
                                      "(sweep best score 0.120, a_00000)")):
        table = ProgressTable(max_epochs=2, by_score=by_score)
        trial = SimpleNamespace(trial_id="a_00000", config={"lr": 0.01})
        table.on_trial_result(0, [], trial, {"epoch": 2, "AP": 0.3, "AR100": 0.4, "best_AP": 0.3, "best_score": 0.12})
        capsys.readouterr()
        table.on_trial_complete(0, [], trial)
        assert capsys.readouterr().out.splitlines()[-1] == expected


def test_a_table_pickled_before_by_score_existed_still_ends_trials(capsys):
    # `boxtune resume` unpickles the callbacks of the run's tuner.pkl, which older runs wrote
    import pickle
    from types import SimpleNamespace

    table = ProgressTable(max_epochs=2)
    del table.__dict__["_by_score"]
    table = pickle.loads(pickle.dumps(table))
    trial = SimpleNamespace(trial_id="a_00000", config={"lr": 0.01})
    table.on_trial_result(0, [], trial, {"epoch": 2, "AP": 0.3, "AR100": 0.4, "best_AP": 0.3, "best_score": 0.3})
    table.on_trial_complete(0, [], trial)
    assert capsys.readouterr().out.splitlines()[-1].startswith("-- a_00000 finished after epoch 2/2: best AP 0.300")


NODE = "03c211b869e8d7b0f4cff445facdb12fc6e16fa2ee24c666dc9c6b7f"


@pytest.mark.parametrize(("failures", "retries", "checkpoint", "failed", "then", "retry"), [
    (0, 2, "ckpt", False, "retry 1 of 2 from epoch 2's checkpoint", 1),  # seen by the watch, before Tune's error
    (1, 2, "ckpt", True, "retry 1 of 2 from epoch 2's checkpoint", 1),  # on_trial_recover: the failure is counted
    (2, 2, "ckpt", True, "retry 2 of 2 from epoch 2's checkpoint", 2),
    (3, 2, "ckpt", True, "no retries left: ERROR", None),
    (1, -1, "ckpt", True, "retry 1 from epoch 2's checkpoint", 1),  # retries: -1, without end
    (1, 1, None, True, "retry 1 of 1 from the start", 1),  # lost before its first checkpoint
    (0, 2, "ckpt", True, "retry from epoch 2's checkpoint (a preempted node: not counted against retries)", 0),
])
def test_a_lost_node_is_one_line_and_a_record_in_the_run_folder(tmp_path, capsys, failures, retries, checkpoint,
                                                                 failed, then, retry):
    from types import SimpleNamespace

    from tune.run.folder import RunFolder

    table = ProgressTable(max_epochs=4, run=str(tmp_path / "run"))
    trial = SimpleNamespace(trial_id="a_00001", config={"lr": 0.01}, num_failures=failures, max_failures=retries,
                            checkpoint=checkpoint)
    table.on_trial_result(0, [], trial, {"epoch": 2, "AP": 0.3, "AR100": 0.4, "best_AP": 0.3, "node_id": NODE})
    capsys.readouterr()
    table._lost(trial, NODE, "10.0.0.7", failed=failed)
    table._lost(trial, NODE, "10.0.0.7", failed=True)  # Tune's error after the watch saw it: told once
    assert capsys.readouterr().out.splitlines() == [f"-- a_00001 lost its node 03c211 (10.0.0.7): {then}"]
    (entry,) = RunFolder.at(str(tmp_path / "run")).node_losses()
    assert {k: entry[k] for k in ("trial", "node_id", "node_ip", "epoch", "retry", "retries")} == {
        "trial": "a_00001", "node_id": NODE, "node_ip": "10.0.0.7", "epoch": 2 if checkpoint else None,
        "retry": retry, "retries": retries}
