"""A sweep folder loaded once: its config, and every trial with its per-epoch results.

``load_sweep(run)`` reads Ray Tune's experiment state (``ray.tune.ExperimentAnalysis``) and
boxtune's own files through ``RunFolder``, and hands out typed views: ``SweepView`` for the sweep,
``TrialView`` per trial. Reports, plots, TensorBoard, the test-split evaluation and export all
start from one of these.

A sweep with a confirmation stage (``search.confirm``) has a second Ray experiment in its
``confirm/`` folder; its trials load into ``SweepView.confirm``, a ``SweepView`` of its own (its
folder, its experiment state, its retention record), never into ``SweepView.trials``: the search's
trials stay what the searcher sampled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from trainables.objective import Objective, best_epoch, parse_objective
from tune.config import SweepConfig
from tune.run import layout
from tune.run.folder import RunFolder

__all__ = ["TrialView", "SweepView", "load_sweep", "creation_number", "UNNUMBERED"]


@dataclass
class TrialView:
    trial_id: str
    status: str  # PENDING, RUNNING, TERMINATED, ERROR (Ray's names)
    config: dict[str, Any]
    history: list[dict[str, Any]]  # one dict per reported epoch
    error: str | None
    path: str
    dir_name: str = ""  # the trial's folder in the sweep folder (Ray names it)
    number: int = 10**9  # creation order, 1 for the first trial the search created (``creation_number``)

    def best(self, objective: Objective | None = None) -> dict[str, Any] | None:
        """The best epoch by score (see ``trainables.objective.best_epoch``); None before the first."""
        return best_epoch([r for r in self.history if "AP" in r], objective)


@dataclass
class SweepView:
    uri: str
    trials: list[TrialView]
    num_trials: int  # asked for in the config
    analysis: Any  # ray.tune.ExperimentAnalysis
    objective: Objective | None = None  # search.metric; None: AP
    test_results: dict[str, Any] | None = None  # test_results.json (tune.results.holdout)
    has_test_split: bool = False  # the run's manifest holds test images
    config: SweepConfig | None = None  # the run's sweep.yaml
    folder: RunFolder | None = field(default=None, repr=False)
    # trained_costs.json: trial id -> its best checkpoint's timing (tune.results.trained_costs); search and
    # confirmation trials alike
    trained_costs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    intervals: Any = None  # tune.run.intervals.Intervals, once rank_trials has computed them
    confirm: SweepView | None = None  # the confirmation stage's trials (``confirm/``), when it has started
    _manifest: Any = field(default=None, repr=False)

    def trial(self, trial_id: str) -> TrialView:
        """A trial of the search or of the confirmation stage, by id."""
        return next(t for t in self.all_trials() if t.trial_id == trial_id)

    def all_trials(self) -> list[TrialView]:
        """The search's trials, then the confirmation stage's."""
        return [*self.trials, *(self.confirm.trials if self.confirm is not None else [])]

    def part_of(self, trial_id: str) -> SweepView:
        """The view whose experiment holds ``trial_id``: this one, or ``confirm`` for a confirmation trial."""
        if self.confirm is not None and any(t.trial_id == trial_id for t in self.confirm.trials):
            return self.confirm
        return self

    def open_node_losses(self) -> list[dict[str, Any]]:
        """The losses of ``node_losses.jsonl`` (``tune.launch.node_loss``) not yet mended: the trial's
        latest loss, where the trial has not ended and has reported no epoch on another node since
        (its latest result is still from the lost node). Search and confirmation trials alike."""
        if self.folder is None:
            return []
        latest = {entry["trial"]: entry for entry in self.folder.node_losses()}
        trials = {t.trial_id: t for t in self.all_trials()}
        open_ = []
        for trial_id, entry in latest.items():
            trial = trials.get(trial_id)
            if trial is not None and trial.status in ("TERMINATED", "ERROR"):
                continue
            last = trial.history[-1] if trial is not None and trial.history else {}
            if last.get("node_id") not in (None, entry["node_id"]):
                continue  # the retry has reported an epoch from another node
            open_.append(entry)
        return open_

    def manifest(self):
        """The run's manifest (read once)."""
        if self._manifest is None:
            self._manifest = self.folder.manifest()
        return self._manifest


def load_sweep(run: str) -> SweepView:
    """Read a sweep folder (while it runs or after). A folder with no ``sweep.yaml`` is a ConfigError;
    one whose experiment state Ray has not written yet has no trials."""
    folder = RunFolder.at(run)
    folder.require_sweep(run)
    cfg = folder.config()
    extras = {"objective": parse_objective(cfg.search.metric), "has_test_split": folder.has_test_split(),
              "config": cfg, "trained_costs": folder.trained_costs()}
    analysis, trials = _experiment(folder)
    view = SweepView(folder.uri, trials, cfg.search.num_trials, analysis, test_results=folder.test_results(),
                     folder=folder, **extras)
    stage = folder.confirm_folder()
    if cfg.search.confirm.top and stage.is_experiment():
        analysis, trials = _experiment(stage)
        view.confirm = SweepView(stage.uri, trials, cfg.search.confirm.top * cfg.search.confirm.seeds, analysis,
                                 folder=stage, **extras)
    return view


def _experiment(folder: RunFolder) -> tuple[Any, list[TrialView]]:
    """A Ray experiment's analysis and trials; (None, []) before Ray has written its state."""
    from ray.tune import ExperimentAnalysis

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = ExperimentAnalysis(folder.uri)
    except (FileNotFoundError, ValueError, RuntimeError):
        return None, []
    frames = analysis.trial_dataframes
    trials = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        history = _one_row_per_epoch([] if frame is None or frame.empty else frame.to_dict("records"))
        error = None
        if str(trial.status) == "ERROR":
            try:
                text = folder.read_trial_file(trial.storage.trial_dir_name, layout.ERROR_FILE)
            except OSError:
                text = None
            error = "errored (no error file)" if text is None else _last_error_line(text)
        trials.append(TrialView(trial.trial_id, str(trial.status), dict(trial.config), history, error,
                                folder.trial_uri(trial.storage.trial_dir_name), trial.storage.trial_dir_name,
                                creation_number(trial.experiment_tag)))
    return analysis, trials


UNNUMBERED = 10**9  # a trial whose creation number is unknown sorts after every numbered one


def creation_number(experiment_tag: str | None) -> int:
    """A trial's creation number (1 for the first trial the search created), from Ray's experiment
    tag (``3_batch_size=4,...``), which also names its folder; ``UNNUMBERED`` when there is none."""
    head = str(experiment_tag or "").split("_", 1)[0]
    return int(head) if head.isdigit() else UNNUMBERED


def _one_row_per_epoch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial's epochs in order, each once: where an epoch was reported twice (a resumed trial that
    ran it again from an older checkpoint), the later report wins. ``boxtune resume`` cuts result
    files back to the checkpoint first (``tune.launch.resume_logs``); this covers folders resumed otherwise."""
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in rows:
        by_epoch.pop(row.get("epoch", row.get("training_iteration")), None)
        by_epoch[row.get("epoch", row.get("training_iteration"))] = row
    return list(by_epoch.values())


def _last_error_line(text: str) -> str:
    """The exception line of a traceback: 'NonFiniteLossError: non-finite loss at epoch 2, step 3: ...'."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line.removeprefix("ray.exceptions.RayTaskError(").strip()
    return lines[-1] if lines else "errored"
