"""A trial's kept checkpoint of its best epoch: the one the ranking calls best, for export and the test split.

Ray keeps each trial's checkpoints by ``score`` (``CheckpointConfig(checkpoint_score_attribute=
"score")``), so its best kept checkpoint is the ranking's best epoch. Checkpoint retention
(``tune.launch.retention``) may have deleted a trial's checkpoints, or kept one stripped folder;
its record says which, and why. A confirmation trial's checkpoint is in the confirmation stage's
experiment (``SweepView.confirm``), under that experiment's own retention record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from trainables.errors import BoxtuneError
from trainables.objective import SCORE
from tune.run.view import SweepView, TrialView

__all__ = ["best_checkpoint"]


@contextmanager
def _quiet_ray_analysis() -> Iterator[None]:
    # ExperimentAnalysis logs an ERROR line for a trial without checkpoints; we raise a clearer error
    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    before = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = before


def best_checkpoint(view: SweepView, chosen: TrialView):
    """The kept checkpoint (a ``ray.tune.Checkpoint``) of trial ``chosen`` with the highest ``score``: its best epoch."""
    from ray import tune

    view = view.part_of(chosen.trial_id)  # the search's experiment, or the confirmation stage's
    ray_trial = next((t for t in view.analysis.trials if t.trial_id == chosen.trial_id), None)
    if ray_trial is None:
        raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id} is not in the experiment state")
    # checkpoints.keep_trials: a trial outside the top lost its checkpoints; a finished one kept one
    folder = view.folder
    retention = folder.retention()
    if chosen.trial_id in retention["deleted"]:
        kept = ", ".join(sorted(retention["kept"])) or "none"
        raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id} has no checkpoint left: it was deleted because "
                           f"{retention['deleted'][chosen.trial_id]}; its metrics, events and config remain. "
                           f"Trials with a checkpoint: {kept}")
    if chosen.trial_id in retention["kept"]:
        trial_dir = retention["trial_dirs"][chosen.trial_id]
        return tune.Checkpoint(f"{folder.trial_path(trial_dir)}/{retention['kept'][chosen.trial_id]}",
                               filesystem=folder.storage.fs)
    with _quiet_ray_analysis():
        checkpoint = view.analysis.get_best_checkpoint(ray_trial, metric=SCORE, mode="max")
    if checkpoint is None:
        raise BoxtuneError(f"{view.uri}: trial {chosen.trial_id} has no checkpoint with a {SCORE} "
                           f"(status {chosen.status}); nothing to export")
    return checkpoint
