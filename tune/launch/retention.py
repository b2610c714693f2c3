"""Bounded disk for a sweep: checkpoints only for the top ``checkpoints.keep_trials`` trials.

A trial checkpoint holds the model and the optimiser state (for SGD with momentum, or Adam, the
optimiser's buffers are as large as the model or twice as large), and Ray keeps two per trial: the
best epoch and the latest. Without a bound a sweep's disk grows with the number of trials.
``CheckpointRetention`` (a ``tune.Callback`` on the driver) acts whenever a trial ends:

* every trial that has reported is ranked by its best epoch, in the ranking's order
  (``tune.run.ranking.rank_order``); a trial that has ended
  (finished, stopped by ASHA, or errored) outside the top ``keep_trials`` loses all its
  checkpoints. Its results, events and config stay. Best-so-far only grows, so such a trial can
  never climb back;
* with several objectives (``search.metric: [AP, latency_ms]``) every trial on the Pareto front
  of the ended and running trials keeps its checkpoint too, beyond ``keep_trials``; and with
  ``search.constraints`` an infeasible trial ranks after every feasible one (``tune.run.front``).
  A trial off the front can never return to it: best scores only grow, and costs are fixed;
* a finished trial inside the top keeps only its best epoch's checkpoint, and that one without the
  optimiser, scheduler and grad-scaler state (export, ``--trial`` and the best-config need the
  weights only; a finished trial is never resumed). An unfinished trial keeps everything.

What was deleted and why is recorded in ``<run>/retention.json``, so ``boxtune export`` can say
why a trial's checkpoint is gone. Deletion goes through the run's own filesystem (local or URI).
"""

from __future__ import annotations

import io
import logging

import torch
from pyarrow import fs as pafs
from ray import tune

from tune.run.folder import RunFolder
from tune.run.front import feasible_front, meets
from tune.run.layout import CHECKPOINT_FILE, CHECKPOINT_FOLDER_PREFIX
from tune.run.ranking import UNNUMBERED, creation_number, rank_order, result_score
from tune.run.storage import RunStorage

__all__ = ["CheckpointRetention", "strip_checkpoint"]

log = logging.getLogger(__name__)

_STRIPPED = ("optimizer", "scheduler", "scaler")  # resume-only state, dropped from a finished trial


def strip_checkpoint(filesystem: pafs.FileSystem, checkpoint_dir: str) -> int:
    """Rewrite ``checkpoint_dir/checkpoint.pt`` without its resume-only state; return the bytes saved."""
    path = f"{checkpoint_dir}/{CHECKPOINT_FILE}"
    with filesystem.open_input_stream(path) as src:
        raw = src.read()
    payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if payload.get("stripped"):
        return 0
    for key in _STRIPPED:
        payload[key] = {}
    payload["stripped"] = True  # loop.run_trial refuses to resume from it
    sink = io.BytesIO()
    torch.save(payload, sink)
    tmp = f"{checkpoint_dir}/.{CHECKPOINT_FILE}.tmp"
    with filesystem.open_output_stream(tmp) as out:
        out.write(sink.getvalue())
    filesystem.move(tmp, path)
    return len(raw) - len(sink.getvalue())


def _number_in_folder(trial_id: str, folder: str) -> int:
    """The creation number in a Ray trial folder's name (``sweep_trainable_<id>_<number>_<params>``)."""
    return creation_number(folder.partition(f"_{trial_id}_")[2])


class CheckpointRetention(tune.Callback):
    """Deletes and strips checkpoints as trials end (see the module docstring)."""

    # a callback unpickled from a sweep started before several objectives has neither
    costs: tuple[str, ...] = ()
    limits: dict[str, tuple[float | None, float | None]] = {}  # noqa: RUF012 - read only

    def __init__(self, storage: RunStorage, *, keep_trials: int, costs: tuple[str, ...] = (),
                 limits: dict[str, tuple[float | None, float | None]] | None = None):
        self.storage = storage  # pickled in the run's tuner.pkl: the folder is rebuilt from it
        self.keep_trials = keep_trials
        self.costs = tuple(costs)  # search.metric's cost objectives: the front keeps its checkpoints
        self.limits = dict(limits or {})  # search.constraints: (min, max) per figure
        self._load()

    @property
    def _folder(self) -> RunFolder:
        return RunFolder(self.storage)

    def _load(self) -> None:
        record = self._folder.retention()  # a resumed sweep continues its record
        self._deleted: dict[str, str] = dict(record.get("deleted", {}))
        self._kept: dict[str, str] = dict(record.get("kept", {}))
        # trial id -> its best score so far (a record written by an older boxtune holds a pair: score first)
        self._scores: dict[str, float | None] = {k: (v[0] if isinstance(v, list) else v)
                                                  for k, v in record.get("scores", {}).items()}
        self._dirs: dict[str, str] = dict(record.get("trial_dirs", {}))
        # creation order, which breaks exact ties; a record written by an older boxtune has none: Ray's
        # folder name holds it (``sweep_trainable_<id>_<number>_...``)
        self._numbers: dict[str, int] = {tid: _number_in_folder(tid, folder) for tid, folder in self._dirs.items()}
        self._numbers.update(record.get("numbers", {}))
        self._ended: set[str] = set(record.get("ended", []))
        self._figures: dict[str, dict[str, float]] = dict(record.get("figures", {}))  # trial id -> its cost figures
        self._best_ckpt: dict[str, str] = dict(record.get("best_checkpoint", {}))
        self._ckpt_by_epoch: dict[str, dict[int, str]] = {}

    # -- tune.Callback ------------------------------------------------------------------------------
    def setup(self, **info):
        # a restored Tuner unpickles this callback as it was when the sweep started: read the record again
        self._load()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "AP" not in result:
            return
        tid = trial.trial_id
        self._scores[tid] = result_score(result)
        if self.costs or self.limits:
            self._figures[tid] = {k: float(result[k]) for k in (*self.costs, *self.limits) if k in result}
        self._numbers[tid] = creation_number(getattr(trial, "experiment_tag", None))
        self._dirs[tid] = trial.storage.trial_dir_name
        if result.get("checkpoint_dir_name"):
            self._ckpt_by_epoch.setdefault(tid, {})[int(result["epoch"])] = result["checkpoint_dir_name"]
        best = self._ckpt_by_epoch.get(tid, {}).get(int(result.get("best_epoch", 0)))
        if best is not None:
            self._best_ckpt[tid] = best

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, finished=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, finished=False)

    # -- the work ------------------------------------------------------------------------------------
    def _end(self, trial, *, finished: bool) -> None:
        tid = trial.trial_id
        self._dirs.setdefault(tid, trial.storage.trial_dir_name)
        self._ended.add(tid)
        top = self._top()
        # a trial that never reported an epoch has no checkpoint to delete
        for other in sorted((self._ended & set(self._scores)) - top - set(self._deleted)):
            freed = self._delete(other, keep=None)
            self._deleted[other] = (f"it ended outside the top {self.keep_trials} trials "
                                    f"(checkpoints.keep_trials: {self.keep_trials})"
                                    + (" and off the Pareto front" if self.costs else ""))
            self._kept.pop(other, None)
            log.info("trial %s: deleted its checkpoints (%.1f MB)", other, freed / 1e6)
        if finished and tid in top and tid not in self._kept and tid in self._best_ckpt:
            best = self._best_ckpt[tid]
            freed = self._delete(tid, keep=best)
            freed += strip_checkpoint(self.storage.fs, f"{self._folder.trial_path(self._dirs[tid])}/{best}")
            self._kept[tid] = best
            log.info("trial %s: kept %s without optimiser state (%.1f MB freed)", tid, best, freed / 1e6)
        self._write()

    def _top(self) -> set[str]:
        """The trials that keep a checkpoint: the first ``keep_trials`` in the ranking's order
        (feasible ones first), and with cost objectives the front of the feasible ones."""
        feasible = {t: meets(self._figures.get(t, {}), self.limits) for t in self._scores}
        ranked = sorted(self._scores, key=lambda t: (not feasible[t],
                                                     *rank_order(self._scores[t], self._numbers.get(t, UNNUMBERED), t)))
        top = set(ranked[:self.keep_trials])
        if self.costs:
            scored = {t: (s, self._figures.get(t, {})) for t, s in self._scores.items() if s is not None}
            top |= feasible_front(scored, self.costs, self.limits)
        return top

    def _delete(self, tid: str, *, keep: str | None) -> int:
        """Delete the trial's checkpoint folders except ``keep``; return the bytes freed."""
        fs = self.storage.fs
        trial_dir = self._folder.trial_path(self._dirs[tid])
        freed = 0
        for info in fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True)):
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            if info.type != pafs.FileType.Directory or not name.startswith(CHECKPOINT_FOLDER_PREFIX) or name == keep:
                continue
            freed += sum(f.size or 0 for f in fs.get_file_info(pafs.FileSelector(info.path, recursive=True)))
            fs.delete_dir(info.path)
        return freed

    def _write(self) -> None:
        self._folder.write_retention({
            "keep_trials": self.keep_trials,
            "deleted": self._deleted,  # trial id -> why its checkpoints are gone
            "kept": self._kept,  # finished trial id -> its one (stripped) checkpoint folder
            "best_checkpoint": self._best_ckpt,
            "scores": self._scores,
            "trial_dirs": self._dirs,
            "numbers": self._numbers,
            "ended": sorted(self._ended),
            "figures": self._figures,
        })
