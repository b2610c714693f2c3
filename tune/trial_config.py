"""One builder for a trial's config, whoever runs the trial: a sweep's trainable, the space check,
``report --best-config`` and ``boxtune train``.

A trial's config is a mapping ``trainables.config.TrialConfig`` validates: ``model``,
``training``, ``hparams`` and ``metric``. A sweep's trial gets the sweep's fixed sections, its
``hparams`` constants, then its sampled values on top (``merge_trial_config``); a ``boxtune
train`` run gets its config file's sections as they are (``train_trial_config``).
"""

from __future__ import annotations

from typing import Any

from search_spaces.builtin import to_hparams
from trainables.architectures import FAMILIES, FAMILY_MODEL_KEYS
from trainables.config import resolve_model_section
from trainables.errors import ConfigError
from trainables.objective import accuracy_metric
from tune.config import SweepConfig, TrainConfig

__all__ = ["sweep_base", "merge_trial_config", "train_trial_config", "trial_threads", "SHORT_NAMES", "format_hparams"]


def sweep_base(cfg: SweepConfig) -> dict[str, Any]:
    """What every trial of the sweep shares: the model and training sections, the hparams
    constants, the objective it reports its score by, and its resources."""
    return {
        "model": cfg.model.model_dump(mode="json"),
        "training": cfg.training.model_dump(mode="json"),
        "hparams": dict(cfg.hparams),
        "metric": accuracy_metric(cfg.search.metric),  # a trial reports by the accuracy objective alone
        "resources": cfg.resources.model_dump(mode="json"),
    }


def merge_trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's full config: the sweep's fixed model/training sections, its hparam constants, then the sample.

    A sampled ``architecture`` goes to the model section, with that architecture's
    ``model.by_architecture`` settings over the shared ones (``resolve_model_section``). A sampled
    ``image_size`` then sets the section's ``min_size`` and ``max_size`` both (the longer side of
    every image is resized to it), over the shared and the per-architecture sizes: the sample is
    the trial's own choice. SSDlite's fixed 320 takes no ``image_size``: a ConfigError, which the
    sweep's preflight finds before any trial runs. Per-optimiser names (``lr_sgd``, ``lr_adam``)
    become their ``HParams`` field (``search_spaces.to_hparams``).
    """
    sampled = to_hparams(dict(sampled))
    architecture = sampled.pop("architecture", None)
    image_size = sampled.pop("image_size", None)
    model = resolve_model_section(base["model"], architecture)
    if image_size is not None:
        if "min_size" not in FAMILY_MODEL_KEYS[FAMILIES[model["architecture"]]]:
            raise ConfigError(
                f"image_size: {model['architecture']} resizes every image to 320x320 (fixed by torchvision's "
                f"builder), so a sampled image_size cannot apply to it; sample image_size only when another "
                f"architecture is chosen (declarative spaces: `when: {{architecture: [...]}}`)")
        model = {**model, "min_size": int(image_size), "max_size": int(image_size)}
    return {
        "model": model,
        "training": base["training"],
        "hparams": {**base.get("hparams", {}), **sampled},
        "metric": base.get("metric", "AP"),  # search.metric: the trial reports its score by it
    }


def train_trial_config(cfg: TrainConfig) -> dict[str, Any]:
    """The trial ``boxtune train`` runs: its config's sections, the hparams it sets (defaults fill the rest)."""
    return {"model": cfg.model.model_dump(), "training": cfg.training.model_dump(),
            "hparams": cfg.hparams.model_dump(exclude_unset=True), "metric": cfg.metric}


def trial_threads(cpu: float) -> int:
    """A trial's torch threads for its ``resources.cpu`` (rounded, at least 1)."""
    return max(1, int(round(cpu)))


# short column names for the hyperparameters a space samples (anything else keeps its name)
SHORT_NAMES = {
    "optimizer": "opt", "lr": "lr", "weight_decay": "wd", "decay_norm_and_bias": "decay_nb", "momentum": "mom",
    "nesterov": "nest", "beta1": "b1", "beta2": "b2", "eps": "eps", "schedule": "sched", "step_size": "step",
    "gamma": "gamma", "milestones": "miles", "eta_min_factor": "eta_min", "pct_start": "pct", "div_factor": "div",
    "final_div_factor": "fdiv", "warmup_iters": "warmup", "warmup_factor": "warm_f", "freeze_depth": "freeze",
    "batch_size": "bs", "hflip_p": "hflip", "vflip_p": "vflip", "jitter_p": "jitter", "brightness": "bright",
    "contrast": "contr", "saturation": "sat", "hue": "hue", "crop_p": "crop", "zoom_out_p": "zoom",
    "zoom_out_max": "zoom_max", "scale_jitter_p": "sjit", "scale_min": "s_min", "scale_max": "s_max",
    "image_size": "size",
}


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
