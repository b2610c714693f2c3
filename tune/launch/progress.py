"""The live sweep table: one row per reported epoch, one line per trial that stops, finishes or fails.

Ray's default output engine (Ray 2.x, ``RAY_AIR_NEW_OUTPUT``) ignores ``progress_reporter`` and
shows the first few numeric result keys (epoch and losses here), never AP or the
hyperparameters. So the sweep runs Ray with ``verbose=0`` and this ``tune.Callback`` prints what
a person watches a sweep for::

    trial        status  epoch   AP     AR100  best AP  hyperparameters
    4f1e2_00000  RUNNING   1/4  0.012  0.054    0.012  opt=sgd lr=0.0123 freeze=3 hflip=0.31
    -- 4f1e2_00001 stopped by ASHA after epoch 2/4: best AP 0.008 (sweep best 0.031, 4f1e2_00000)

``best AP`` is the trial's best epoch so far; ``score`` (the sweep objective's best, when
trials report one) follows it, then ``GPU MiB`` for trials on a GPU: the peak memory the trial's
allocator held so far, what packing several trials on one card must fit. Hyperparameters are the ones the search space sampled, under short
names, floats to 3 significant digits; a conditional parameter shows only where it was sampled.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from ray import tune

from tune.run.ranking import rank_order, result_score

__all__ = ["ProgressTable", "SHORT_NAMES", "format_hparams"]

# short column names for the hyperparameters a space samples (anything else keeps its name)
SHORT_NAMES = {
    "optimizer": "opt", "lr": "lr", "weight_decay": "wd", "decay_norm_and_bias": "decay_nb", "momentum": "mom",
    "nesterov": "nest", "beta1": "b1", "beta2": "b2", "eps": "eps", "schedule": "sched", "step_size": "step",
    "gamma": "gamma", "milestones": "miles", "eta_min_factor": "eta_min", "pct_start": "pct", "div_factor": "div",
    "final_div_factor": "fdiv", "warmup_iters": "warmup", "warmup_factor": "warm_f", "freeze_depth": "freeze",
    "batch_size": "bs", "hflip_p": "hflip", "vflip_p": "vflip", "jitter_p": "jitter", "brightness": "bright",
    "contrast": "contr", "saturation": "sat", "hue": "hue", "crop_p": "crop", "zoom_out_p": "zoom",
    "zoom_out_max": "zoom_max", "scale_jitter_p": "sjit", "scale_min": "s_min", "scale_max": "s_max",
}
_HEADER_EVERY = 25  # rows between repeated headers, so a scrolled terminal still shows the columns


def _round(value: Any) -> str:
    if isinstance(value, bool):
        return "y" if value else "n"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ",".join(_round(v) for v in value)
    return str(value)


def format_hparams(config: dict[str, Any]) -> str:
    """``opt=sgd lr=0.0123 mom=0.9``: sampled hyperparameters, short names, rounded, in config order."""
    return " ".join(f"{SHORT_NAMES.get(k, k)}={_round(v)}" for k, v in config.items())


def _metric(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "    -"
    return "  nan" if math.isnan(v) else f"{v:.3f}"


def _mib(value: Any) -> str:
    try:
        return f"{float(value):.0f}"
    except (TypeError, ValueError):
        return "-"


class ProgressTable(tune.Callback):
    """Prints the sweep's live table on the driver (see the module docstring)."""

    _by_score = False  # a table pickled by a run from before this attribute (resumed) has none

    def __init__(self, *, max_epochs: int, by_score: bool = False):
        self.max_epochs = max_epochs
        self._by_score = by_score  # the objective is not plain AP: a trial's end line gives its score too
        self._rows = 0
        self._best: dict[str, dict[str, Any]] = {}  # trial id -> its latest result
        self._score = False  # the objective's score column, once a trial reports one
        self._gpu = False  # peak GPU memory held by the trial (MiB), once a trial on a GPU reports it

    def _echo(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)  # sys.stdout looked up now: a test's capture sees it

    # -- the table ------------------------------------------------------------------------------
    def _header(self) -> str:
        score = "  score" if self._score else ""
        gpu = " GPU MiB" if self._gpu else ""
        return (f"{'trial':<12} {'status':<8} {'epoch':>5} {'AP':>6} {'AR100':>6} {'best AP':>7}{score}{gpu}"
                f"  hyperparameters")

    def row(self, trial_id: str, status: str, result: dict[str, Any], config: dict[str, Any]) -> str:
        epoch = f"{int(result.get('epoch', 0))}/{self.max_epochs}"
        score = f" {_metric(result.get('best_score')):>6}" if self._score else ""
        gpu = f" {_mib(result.get('gpu_reserved_mib')):>7}" if self._gpu else ""
        return (f"{trial_id:<12} {status:<8} {epoch:>5} {_metric(result.get('AP')):>6} {_metric(result.get('AR100')):>6} "
                f"{_metric(result.get('best_AP')):>7}{score}{gpu}  {format_hparams(config)}")

    def _sweep_best(self) -> tuple[str, dict[str, Any]] | None:
        if not self._best:
            return None
        return min(self._best.items(), key=lambda kv: rank_order(result_score(kv[1]), kv[0]))

    def _ended(self, trial, how: str) -> None:
        result = self._best.get(trial.trial_id) or {}
        epochs = int(result.get("epoch", 0))
        if how == "complete":
            how = "finished" if epochs >= self.max_epochs else "stopped by ASHA"
        line = f"-- {trial.trial_id} {how} after epoch {epochs}/{self.max_epochs}: best AP {_metric(result.get('best_AP')).strip()}"
        # trials rank by the objective: where it is not plain AP, the score is shown and the sweep's best is by it
        if self._by_score:
            line += f", score {_metric(result.get('best_score')).strip()}"
        best = self._sweep_best()
        if best is not None:
            shown, key = ("score ", "best_score") if self._by_score else ("", "best_AP")
            line += f" (sweep best {shown}{_metric(best[1].get(key)).strip()}, {best[0]})"
        self._echo(line)

    # -- tune.Callback ------------------------------------------------------------------------------
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "AP" not in result:
            return
        self._best[trial.trial_id] = dict(result)
        if "best_score" in result and not self._score:
            self._score = True
            self._rows = 0  # the header changes: print it again
        if "gpu_reserved_mib" in result and not self._gpu:
            self._gpu = True
            self._rows = 0
        if self._rows % _HEADER_EVERY == 0:
            self._echo(self._header())
        self._rows += 1
        self._echo(self.row(trial.trial_id, "RUNNING", result, dict(trial.config)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "complete")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "errored")

