"""The search's Optuna study on disk (``tune/run/study.py``), read as a user reads it.

* The shared sweep's ``optuna.journal`` opens with ``optuna.load_study`` and holds one Optuna
  trial per Ray trial, each the ranking's row: the same Ray id, creation number, sampled
  parameters, score and per-epoch best score.
* A URI run folder's journal is written to a local copy and copied to the folder, and a resume on
  another driver goes on from the folder's copy. ``local://`` is a URI that pyarrow resolves to
  this disk, so the URI code path runs on real files.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import optuna
import pyarrow.parquet as pq
from optuna.storages import JournalStorage
from optuna.trial import TrialState
from shared_run import NUM_TRIALS, load_study, study_by_ray_trial

from trainables.objective import BEST_SCORE
from tune.run import load_sweep
from tune.run.folder import RunFolder
from tune.run.layout import RANKING_FILE, STUDY_FILE
from tune.run.storage import RunStorage
from tune.run.study import CREATION_NUMBER


def test_the_study_holds_the_ranking_trial_by_trial(shared_run):
    run = shared_run.run
    study = load_study(run)
    assert study.study_name == shared_run.config["name"] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    by_id, forgotten = study_by_ray_trial(run)
    assert not forgotten and len(study.trials) == NUM_TRIALS
    ranking = pq.read_table(run / RANKING_FILE).to_pylist()
    assert sorted(by_id) == sorted(row["trial"] for row in ranking)
    view = load_sweep(str(run))
    for row in ranking:
        trial = by_id[row["trial"]]
        # asked in creation order, one study, no kill: Optuna's number is the creation number less one
        assert trial.user_attrs[CREATION_NUMBER] == row["number"] == trial.number + 1
        config = view.trial(row["trial"]).config
        assert trial.params == {name: config[name] for name in trial.params}
        for name, value in trial.params.items():  # the ranking's columns of the parameters that varied
            if name in row:
                assert row[name] == value, (row["trial"], name)
        if row["status"] == "ERROR":  # the diverging trial: no epoch scored, told FAIL
            assert trial.state == TrialState.FAIL and trial.value is None
            continue
        assert trial.state == TrialState.COMPLETE and trial.value == row["score"]
        # each epoch's best score so far, at Ray's training_iteration; the epoch a scheduler stops a
        # trial at reaches Optuna as its end (its value), not as a report
        history = {int(r["training_iteration"]): r[BEST_SCORE] for r in view.trial(row["trial"]).history}
        assert set(history) - set(trial.intermediate_values) <= {max(history)}
        assert trial.intermediate_values == {step: history[step] for step in trial.intermediate_values}
        assert trial.value == history[max(history)]
    sampled = [t for t in study.trials if t.params]
    assert len(sampled) == NUM_TRIALS - 1  # the diverging trial's space returns its config without sampling
    assert all({"optimizer", "lr", "hflip_p", "freeze_depth"} <= set(t.params) for t in sampled)


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def test_a_uri_run_folders_journal_is_written_locally_and_copied(tmp_path):
    storage = RunStorage(f"local://{tmp_path}/bucket", "remote")
    assert storage.remote
    copied = tmp_path / "bucket" / "remote" / STUDY_FILE
    journal = RunFolder(storage).journal()
    journal.discard_local_copy()
    try:
        assert not Path(journal.local_path).is_relative_to(tmp_path)
        study = optuna.create_study(study_name="remote", storage=JournalStorage(journal), direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(_objective, n_trials=3)
        assert not copied.exists()  # written locally only
        journal.upload()
        assert copied.read_bytes() == Path(journal.local_path).read_bytes()

        # another driver resumes it: no local copy yet; the journal comes back as Ray unpickles it
        journal.discard_local_copy()
        assert not os.path.exists(journal.local_path)
        again = pickle.loads(pickle.dumps(journal))
        again.download()
        resumed = optuna.load_study(study_name="remote", storage=JournalStorage(again))
        assert [(t.params, t.value) for t in resumed.trials] == [(t.params, t.value) for t in study.trials]
        resumed.optimize(_objective, n_trials=1)
        again.upload()
        in_folder = optuna.load_study(study_name="remote", storage=JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(copied))))
        assert [t.number for t in in_folder.trials] == [0, 1, 2, 3]
        assert all(t.state == TrialState.COMPLETE for t in in_folder.trials)
    finally:
        journal.discard_local_copy()
