"""A sweep trial as a ``boxtune train`` config: the winner, reproducible and ready for a longer run.

``boxtune report RUN --best-config best.yaml`` writes what the best trial (or ``--trial``) used:

* ``data``: the run's own ``manifest.parquet`` (the very records and split the sweep trained and
  evaluated on) and the split seed it was built with;
* ``model`` and ``training``: the sweep's sections, defaults filled in;
* ``hparams``: the sweep's constants merged with the trial's sample, as the trial resolved them
  (keys of branches not chosen left out);
* ``threads``: the trial's torch threads (``resources.cpu``, rounded, as the trainable sets them);
* ``metric``: the sweep's objective, so the run picks its best epoch the same way.

``boxtune train best.yaml --out x --device cpu`` then gives that trial's per-epoch metrics exactly
on CPU (same seed, data order, per-sample augmentation seeds and thread count).
``--epochs N`` or ``--set key=value`` turn it into a longer final run. With a confirmation stage,
the best trial is the one export ships (the best mean config's seed closest to the mean), with its
own training seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainables.atomic import atomic_write_text
from trainables.config import TrialConfig
from trainables.errors import BoxtuneError
from trainables.objective import accuracy_metric
from tune.run.confirmation import trial_sample
from tune.run.ranking import pick_trial
from tune.run.view import SweepView
from tune.trial_config import merge_trial_config, sweep_base, trial_threads

__all__ = ["best_train_config", "write_best_config"]


def best_train_config(view: SweepView, *, trial: str | None = None) -> tuple[str, dict[str, Any]]:
    """The trial id and train config (a mapping ``TrainConfig`` validates) of the best trial or ``trial``."""
    sweep = view.config
    chosen = pick_trial(view, trial)
    # a confirmation trial: its search trial's sample, with its own training seed
    sampled, seed = trial_sample(view, chosen.trial_id)
    base = sweep_base(sweep)
    base["training"] = {**base["training"], "seed": seed}
    resolved = TrialConfig.model_validate(merge_trial_config(base, sampled)).resolved()
    out: dict[str, Any] = {
        "data": {"path": view.folder.manifest_uri(), "seed": sweep.data.seed},
        "model": resolved["model"],
        "training": resolved["training"],
        "threads": trial_threads(sweep.resources.cpu),
        "hparams": resolved["hparams"],
    }
    metric = getattr(sweep.search, "metric", None)
    if metric is not None:  # boxtune train weighs one objective: a list's accuracy part
        out["metric"] = accuracy_metric(metric)
    return chosen.trial_id, out


def write_best_config(view: SweepView, path: str | Path, *, trial: str | None = None) -> Path:
    """Write :func:`best_train_config` as YAML to ``path`` (atomically); return the path."""
    path = Path(path)
    if path.is_dir():
        raise BoxtuneError(f"--best-config {path} is a folder; give a file name such as {path / 'best.yaml'}")
    trial_id, data = best_train_config(view, trial=trial)
    header = (f"# boxtune train config of trial {trial_id} of sweep {view.uri}\n"
              f"# reproduce: boxtune train {path.name} --out DIR --device cpu; longer: add --epochs N\n")
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))
    return path
