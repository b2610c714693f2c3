"""Before a sweep resumes: cut each unfinished trial's result files back to the checkpoint it resumes from.

Ray writes a trial's ``result.json`` (and ``progress.csv``) line by line as results arrive, but its
experiment snapshot, which says which checkpoint each trial resumes from, is written a moment
later. A driver killed in between leaves result files one epoch (or more) ahead of the snapshot.
``Tuner.restore`` then runs those epochs again from the older checkpoint and appends them a
second time. So before the restore, every trial that will run again keeps exactly the rows up to
its checkpoint's epoch: the epochs its checkpoint's history holds (``TrialState.history``), which
is also the history the resumed trial reports its best epoch from. A trial without a checkpoint
starts again from epoch 1 and keeps no rows.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from typing import Any

from trainables.checkpoint import load_checkpoint
from tune.run.folder import RunFolder
from tune.run.layout import PROGRESS_FILE, RESULT_FILE

__all__ = ["truncate_to_checkpoints"]
_FINISHED = ("TERMINATED", "ERROR")  # never run again by `boxtune resume`


def _epoch(row: dict[str, Any]) -> int:
    value = row.get("epoch") or row.get("training_iteration") or 0
    return int(float(value))


def _cut_json(text: str, epoch: int) -> tuple[str, int]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if _epoch(json.loads(ln)) <= epoch]
    return "".join(ln + "\n" for ln in kept), len(lines) - len(kept)


def _cut_csv(text: str, epoch: int) -> str:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return text
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r for r in rows if _epoch(r) <= epoch)
    return out.getvalue()


def truncate_to_checkpoints(folder: RunFolder) -> dict[str, int]:
    """Cut the result files of every trial that will run again; return trial id -> rows dropped."""
    from ray.tune import ExperimentAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = ExperimentAnalysis(folder.uri)
    dropped: dict[str, int] = {}
    for trial in analysis.trials:
        if str(trial.status) in _FINISHED:
            continue
        checkpoint = analysis.get_last_checkpoint(trial)  # the one Tuner.restore resumes from
        if checkpoint is None:
            epoch = 0
        else:
            with checkpoint.as_directory() as checkpoint_dir:
                epoch = load_checkpoint(checkpoint_dir).epoch
        trial_dir = trial.storage.trial_dir_name
        text = folder.read_trial_file(trial_dir, RESULT_FILE)
        if text is not None:
            kept, n = _cut_json(text, epoch)
            if n:
                folder.write_trial_file(trial_dir, RESULT_FILE, kept)
                dropped[trial.trial_id] = n
        text = folder.read_trial_file(trial_dir, PROGRESS_FILE)
        if text is not None and trial.trial_id in dropped:
            folder.write_trial_file(trial_dir, PROGRESS_FILE, _cut_csv(text, epoch))
    return dropped
