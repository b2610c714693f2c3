"""The sweep's searcher: Ray's OptunaSearch with its study in the run folder's journal.

``StudySearch`` is ``ray.tune.search.optuna.OptunaSearch`` given
``storage=JournalStorage(RunJournal(run folder))`` (``tune.run.study``): the study lives in
``<run>/optuna.journal``, which optuna-dashboard and ``optuna.load_study`` read while the sweep
runs. It adds what a study shared with users and a resumable sweep need:

* **Which trial is which.** Each Optuna trial gets the user attributes ``ray_trial_id`` and
  ``creation_number`` as it is asked, so a trial in the study names its Ray trial and its row in
  the ranking (``trial``, ``number``).
* **First trials one at a time.** The known-good first configs (``points_to_evaluate``) are
  enqueued each just before the ask that takes it, not all up front as Ray does: a queued trial
  that a kill took out of the queue would otherwise come back out of order.
* **Kill and resume.** Ray saves the searcher (its sampler, and which Optuna trial each Ray trial
  is) with each experiment snapshot, while the journal is written as the search goes. After a
  SIGKILL the journal can hold trials asked after the last snapshot, which the restored
  experiment does not know; on resume they are told FAIL with a ``forgotten`` attribute saying
  why, and Ray asks again for their creation numbers from the sampler as the snapshot left it.
  So no trial stays RUNNING, and every other Optuna trial is exactly one Ray trial. A result or
  an end that reached the journal before the kill is not reported or told a second time.
* **A URI run folder** gets its local journal copied at each snapshot (``save``), and
  ``tune.launch.sweep`` copies it once more when the trials end.

**Several objectives** (``search.metric: [AP, latency_ms]``): the study has a direction per
objective, maximise the best score and minimise each cost, and each trial is told them together
when it ends (Optuna takes no intermediate values then). Every result carries the cost figures
(``tune.launch.costs``), so an early-stopped trial's last one does too. Each trial's figures are
also stored as user attributes as it ends, and with ``search.constraints`` one constraint value
per limit (``Trial.set_constraint``, ``tune.run.front.constraint_values``: > 0 outside it), which
TPE and GP learn from; random and QMC sampling ignore them. Either way the ranking never crowns an
infeasible trial.

With ``scheduler.name: halving`` ``tune.launch.halving.BatchedSearcher`` wraps it and tells it of
trials late, in creation order: an ended trial stays RUNNING in the study until its batch is
told, at the latest when the trials end. The confirmation stage (``tune.launch.confirm``) has no
searcher: its trials never enter the study.

Ray's OptunaSearch keeps which Optuna trial each Ray trial is in ``_ot_trials`` and the study in
``_ot_study``; this module is the one place that reads them.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import pyarrow as pa
from optuna.storages import JournalStorage
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from trainables.cost import COST_COLUMNS
from tune.run.front import constraint_values
from tune.run.study import CREATION_NUMBER, FORGOTTEN, RAY_TRIAL_ID, RunJournal

__all__ = ["StudySearch", "FORGOTTEN_REASON"]

log = logging.getLogger(__name__)

FORGOTTEN_REASON = ("asked after Ray's last experiment snapshot, then lost when the sweep's driver was killed; "
                    "boxtune resume asked again for this creation number")


class StudySearch(OptunaSearch):
    """OptunaSearch over the run folder's journal (see the module docstring)."""

    _limits: dict[str, tuple[float | None, float | None]] = {}  # noqa: RUF012 - a searcher pickled before constraints

    def __init__(self, *, space, metric: str, mode: str, sampler: optuna.samplers.BaseSampler, journal: RunJournal,
                 study_name: str, points_to_evaluate: list[dict[str, Any]] | None = None,
                 limits: dict[str, tuple[float | None, float | None]] | None = None):
        self._journal = journal
        self._limits = dict(limits or {})  # search.constraints: (min, max) per cost figure
        self._store = JournalStorage(journal)
        self._first = [dict(point) for point in points_to_evaluate or []]
        self._created = 0  # trials asked for: the next one's creation number is one more
        self._reconciled = False
        super().__init__(space=space, metric=metric, mode=mode, sampler=sampler, study_name=study_name,
                         storage=self._store)

    # -- the journal -------------------------------------------------------------------------------
    def _study_id(self) -> int:
        return self._store.get_study_id_from_name(self._ot_study.study_name)

    def _state(self, trial_id: str) -> TrialState | None:
        """The journal's state of Ray trial ``trial_id``'s Optuna trial; None for a trial it does not know."""
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return None
        study_id = self._study_id()
        return self._store.get_trial(self._store.get_trial_id_from_study_id_trial_number(study_id, trial.number)).state

    def _reconcile(self) -> None:
        """Tell FAIL every trial of the journal still RUNNING or WAITING that no Ray trial is (asked
        after the snapshot this searcher was restored from)."""
        known = {trial.number for trial in self._ot_trials.values()}
        study_id = self._study_id()
        for frozen in self._store.get_all_trials(study_id, deepcopy=False,
                                                 states=(TrialState.RUNNING, TrialState.WAITING)):
            if frozen.number in known:
                continue
            trial_id = self._store.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            self._store.set_trial_user_attr(trial_id, FORGOTTEN, FORGOTTEN_REASON)
            self._store.set_trial_state_values(trial_id, TrialState.FAIL)
            log.info("Optuna trial %d (creation number %s) was lost with the last driver; told FAIL", frozen.number,
                     frozen.user_attrs.get(CREATION_NUMBER, "unknown"))
        self._reconciled = True

    # -- Searcher ----------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if not self._reconciled:
            self._reconcile()
        if trial_id in self._ot_trials:
            return super().suggest(trial_id)
        if self._created < len(self._first):
            self._ot_study.enqueue_trial(self._first[self._created])
        config = super().suggest(trial_id)
        self._created += 1
        trial = self._ot_trials[trial_id]
        trial.set_user_attr(RAY_TRIAL_ID, trial_id)
        trial.set_user_attr(CREATION_NUMBER, self._created)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        state = self._state(trial_id)
        if state is not None and state.is_finished():
            return  # told before a kill that Ray's last snapshot missed; the trial re-runs epochs the study has
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        state = self._state(trial_id)
        if state is not None and state.is_finished():
            return  # the journal has it: told before a kill that Ray's last snapshot missed
        trial = self._ot_trials.get(trial_id)
        if trial is not None and result:  # before the tell: the sampler reads the constraints as it is told
            for key in COST_COLUMNS:
                if key in result:
                    trial.set_user_attr(key, float(result[key]))
            for key, value in constraint_values(result, self._limits).items():
                trial.set_constraint(key, value)
        super().on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        super().save(checkpoint_path)
        try:
            self._journal.upload()
        except (OSError, pa.ArrowException) as err:  # the next snapshot copies it again
            log.warning("could not copy the Optuna journal to %s (%s: %s); the sweep goes on",
                        self._journal.storage.uri, type(err).__name__, err)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)  # the sampler, and which Optuna trial each Ray trial is
        self._reconcile()
