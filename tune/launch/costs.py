"""What each model a sweep can train costs to run, measured once before its trials start (``cost.measure``).

Latency is taken as a property of the model's structure: the architecture, its input size
(``model_kwargs``: ``min_size``/``max_size``) and the class count, timed on an untrained model. That
is an upper bound: for the one-stage families the weights change only the post-processing
(trained SSDlite ran at 0.70x to 0.96x of its figure), and Faster R-CNN's box head runs once per
RPN proposal that passes the RPN's score filter, which an untrained RPN passes all of (trained:
0.35x to 0.54x; ``trainables.cost``, docs/benchmarks.md). The search is guided by these figures;
once the trials end, the kept checkpoints are timed trained (``tune.results.trained_costs``) and
the ranking uses those where it has them.
The sweep finds every such structure its space can produce (``space_structures``), measures each
in a process of its own while no trial runs (``trainables.cost``), writes the table to the run
folder (``costs.json``) and hands it to the trials, which add their structure's figures to every
result they report (``cost_figures``): so the ranking, the export's metadata and an early-stopped
trial's last result carry them too.

Finding every structure needs the architecture and the input size to be constants or choices: the
space is run once per architecture it offers and once per size offered under it. An input size
searched over a range (``image_size: {int: [256, 640]}``) cannot be measured ahead, and is refused
while ``cost.measure`` is on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from search_spaces import suggest_hparams
from trainables.cost import COST_COLUMNS, COST_TAG_PREFIX, CostRequest, measure_in_subprocess, structure_key
from trainables.errors import ConfigError
from tune.launch.space_check import CornerSampler

__all__ = ["space_structures", "measure_structures", "cost_figures", "write_cost_scalars", "COST_EVENTS_SUFFIX"]

COST_EVENTS_SUFFIX = ".boxtune-cost"  # the trial's one events file of them (written once, kept on a retry)

_SEARCHED = ("architecture", "image_size")  # the sampled keys that change a model's structure


def _choices(trial: optuna.trial.FrozenTrial, name: str) -> list[Any] | None:
    """The values ``name`` was offered in ``trial`` (None if not sampled); a range is a ConfigError."""
    dist = trial.distributions.get(name)
    if dist is None:
        return None
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    raise ConfigError(f"cost.measure: the space searches {name} over a range ({dist.low} to {dist.high}), so the "
                      f"models it can train cannot be measured before the trials start; search it as a choice "
                      f"(declarative spaces: `{name}: {{choice: [...]}}`), or set cost.measure: false where search.metric "
                      f"and search.constraints name no cost")


def space_structures(space, merged: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model section the space can give a trial, one per distinct structure (``structure_key``).

    ``merged(sampled)`` is the trial config of a sample (``merge_trial_config``). The space runs with
    every other parameter at its first choice or low end, once per architecture it offers and once
    per input size offered under that architecture.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = CornerSampler()  # a pinned parameter takes that choice, every other its first choice or low end
    study = optuna.create_study(sampler=sampler)

    def run(pins: dict[str, int]) -> tuple[dict[str, Any], optuna.trial.FrozenTrial]:
        sampler.pins, sampler.mode = pins, "low"
        trial = study.ask()
        sampled = suggest_hparams(space, trial)
        study.tell(trial, 0.0)
        return merged(sampled)["model"], study.trials[-1]

    found: dict[str, dict[str, Any]] = {}
    _, first = run({})
    archs = _choices(first, "architecture")
    for a in range(len(archs)) if archs else [None]:
        pins = {} if a is None else {"architecture": a}  # indices into the choices
        model, trial = run(pins)
        found.setdefault(structure_key(model), model)
        for s in range(len(_choices(trial, "image_size") or [])):
            model, _ = run({**pins, "image_size": s})
            found.setdefault(structure_key(model), model)
    return [found[k] for k in sorted(found)]


def measure_structures(models: list[dict[str, Any]], *, num_classes: int, threads: int, warmup: int, repeats: int,
                       onnx: bool, echo=print) -> dict[str, dict[str, Any]]:
    """``structure_key`` -> the figures of ``trainables.cost`` for each model section, one subprocess each."""
    out = {}
    for i, model in enumerate(models, 1):
        key = structure_key(model)
        shown = ", ".join(f"{k} {v}" for k, v in json.loads(key).items() if k != "architecture")
        echo(f"  measuring {model['architecture']}{f' ({shown})' if shown else ''}: {i} of {len(models)}")
        spec = json.loads(key)
        request = CostRequest(spec.pop("architecture"), num_classes, spec, threads=threads, warmup=warmup,
                              repeats=repeats, onnx=onnx)
        figures = measure_in_subprocess(request)
        echo(f"    {figures['latency_ms']:.1f} ms at batch 1 on {threads} thread{'s' if threads != 1 else ''} "
             f"({figures['latency_p10_ms']:.1f}..{figures['latency_p90_ms']:.1f}), "
             f"{figures['params'] / 1e6:.2f} M parameters, {figures['file_mb']:.1f} MB")
        out[key] = figures
    return out


def cost_figures(costs: Mapping[str, Mapping[str, Any]] | None, model_section: Mapping[str, Any]) -> dict[str, float]:
    """The figures a trial of ``model_section`` adds to each result ({} when costs are not measured)."""
    if not costs:
        return {}
    figures = costs.get(structure_key(model_section))
    if figures is None:  # space_structures found every structure; a miss is a bug, not a user error
        raise KeyError(f"no cost measured for {structure_key(model_section)}; measured: {sorted(costs)}")
    out = {}
    for key in COST_COLUMNS:
        value = figures.get(key)
        out[key] = math.nan if value is None else float(value)
    return out


def write_cost_scalars(trial_dir, figures: Mapping[str, float]) -> None:
    """The figures as TensorBoard scalars ``cost/<name>`` at step 0, in their own events file of the trial's
    folder, once: a retried trial finds the file and writes nothing again. Nothing without figures."""
    from pathlib import Path

    measured = {k: v for k, v in figures.items() if not math.isnan(v)}
    if not measured or any(Path(trial_dir).glob(f"*{COST_EVENTS_SUFFIX}")):
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(trial_dir), filename_suffix=COST_EVENTS_SUFFIX)
    for key, value in measured.items():
        writer.add_scalar(f"{COST_TAG_PREFIX}{key}", float(value), 0)
    writer.close()
