"""The trial's config schema: what one trial needs, validated before any work starts.

A trial config has three parts:

* ``model``: architecture, weights and the class-to-COCO mapping for the pruned head (fixed for a
  sweep);
* ``training``: epochs, seed, loader workers, AMP, image logging (fixed for a sweep);
* ``hparams``: what a search space samples, one flat mapping with stable names.

Hyperparameters that belong to one branch of another (momentum only for SGD, ``step_size`` only
for the step schedule) are errors when set on another branch: in a sweep, a knob that silently
does nothing wastes trials.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables.errors import ConfigError

__all__ = [
    "ARCHITECTURES",
    "OPTIMIZERS",
    "SCHEDULES",
    "ModelConfig",
    "TrainingConfig",
    "HParams",
    "TrialConfig",
    "format_validation_error",
    "parse_trial_config",
]

ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "onecycle")

# Which hyperparameters each branch owns. A key listed here may only be set when its branch
# is chosen; every other key applies always.
_BRANCH_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "optimizer": {
        "sgd": ("momentum", "nesterov"),
        "adam": ("beta1", "beta2", "eps"),
        "adamw": ("beta1", "beta2", "eps"),
    },
    "schedule": {
        "constant": (),
        "step": ("step_size", "gamma"),
        "multistep": ("milestones", "gamma"),
        "exponential": ("gamma",),
        "cosine": ("eta_min_factor",),
        "onecycle": ("pct_start", "div_factor", "final_div_factor"),
    },
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


class ModelConfig(_Strict):
    """Which detector, which weights, and how the COCO head is cut to the dataset's classes."""

    architecture: Literal[ARCHITECTURES] = "fasterrcnn_mobilenet_v3_large_320_fpn"  # type: ignore[valid-type]
    # A torchvision weights name ("DEFAULT", "COCO_V1"), a local .pth/.pt path, or None (random).
    weights: str | None = None
    # dataset class name -> COCO category name whose head rows initialise it; unmapped classes
    # (or None) get fresh initialisation.
    class_map: dict[str, str | None] = Field(default_factory=dict)
    min_size: int = Field(default=320, ge=32, le=2048)  # shorter image side after resizing, px
    max_size: int = Field(default=640, ge=32, le=4096)  # longer side cap, px
    # RoIs sampled per image for the box head's loss (torchvision's default 512). The head's first
    # layer is 12544x1024, so on CPU 128 trains about 5x faster, and with a few objects per image
    # it is plenty (Detectron2's small-dataset recipe uses 128).
    box_batch_size_per_image: int = Field(default=512, ge=16, le=4096)

    @model_validator(mode="after")
    def _sizes(self) -> ModelConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self


class TrainingConfig(_Strict):
    """How long and how a trial runs; fixed across a sweep."""

    epochs: int = Field(default=10, ge=1, le=1000)
    seed: int = 0
    num_workers: int = Field(default=0, ge=0, le=64)  # DataLoader decoding processes
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); always off on CPU
    grad_clip_norm: float | None = Field(default=None, gt=0)
    image_log_every: int = Field(default=0, ge=0)  # epochs between TensorBoard image grids; 0 = off
    image_log_count: int = Field(default=4, ge=1, le=32)
    eval_batch_size: int = Field(default=4, ge=1, le=256)


class HParams(_Strict):
    """The searchable hyperparameters, flat, with stable names."""

    # optimiser
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr: float = Field(default=0.005, gt=0, le=10)
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    decay_norm_and_bias: bool = True  # False: no weight decay on norm layers and biases
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd
    beta1: float = Field(default=0.9, ge=0, lt=1)  # adam, adamw
    beta2: float = Field(default=0.999, ge=0, lt=1)  # adam, adamw
    eps: float = Field(default=1e-8, gt=0, le=1)  # adam, adamw
    # learning-rate schedule; every schedule is stepped once per iteration (see trainables.optim)
    schedule: Literal[SCHEDULES] = "constant"  # type: ignore[valid-type]
    step_size: int = Field(default=3, ge=1)  # step: epochs between decays
    gamma: float = Field(default=0.1, gt=0, le=1)  # step/multistep/exponential: multiplicative
    milestones: list[int] = Field(default_factory=lambda: [6, 9])  # multistep: epochs
    eta_min_factor: float = Field(default=0.0, ge=0, lt=1)  # cosine: final lr as a share of lr
    pct_start: float = Field(default=0.3, gt=0, lt=1)  # onecycle
    div_factor: float = Field(default=25.0, ge=1)  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = Field(default=1e4, ge=1)  # onecycle
    warmup_iters: int = Field(default=0, ge=0)  # linear warm-up over the first iterations
    warmup_factor: float = Field(default=0.001, gt=0, le=1)  # lr multiplier at iteration 0
    # how much of the network trains: 0 = everything, the architecture's maximum = box predictor only
    freeze_depth: int = Field(default=0, ge=0)
    batch_size: int = Field(default=2, ge=1, le=256)
    # augmentation (probabilities in [0, 1], magnitudes as torchvision's transforms take them)
    hflip_p: float = Field(default=0.5, ge=0, le=1)
    vflip_p: float = Field(default=0.0, ge=0, le=1)
    jitter_p: float = Field(default=0.0, ge=0, le=1)
    brightness: float = Field(default=0.2, ge=0, le=1)
    contrast: float = Field(default=0.2, ge=0, le=1)
    saturation: float = Field(default=0.2, ge=0, le=1)
    hue: float = Field(default=0.02, ge=0, le=0.5)
    crop_p: float = Field(default=0.0, ge=0, le=1)  # IoU-constrained random crop
    zoom_out_p: float = Field(default=0.0, ge=0, le=1)  # random padding (zoom out)
    zoom_out_max: float = Field(default=2.0, ge=1, le=8)  # largest canvas side / image side
    scale_jitter_p: float = Field(default=0.0, ge=0, le=1)
    scale_min: float = Field(default=0.5, gt=0, le=1)  # scale jitter range, relative
    scale_max: float = Field(default=1.5, ge=1, le=4)

    @model_validator(mode="after")
    def _branches(self) -> HParams:
        problems = []
        for selector, branches in _BRANCH_KEYS.items():
            chosen = getattr(self, selector)
            allowed = set(branches[chosen])
            owned = {k for keys in branches.values() for k in keys}
            for key in sorted((self.model_fields_set & owned) - allowed):
                owners = sorted(b for b, keys in branches.items() if key in keys)
                problems.append(
                    f"{key} applies only to {selector} {'/'.join(owners)}, but {selector} is {chosen!r}"
                )
        if self.schedule == "multistep" and sorted(self.milestones) != self.milestones:
            problems.append(f"milestones must be increasing, got {self.milestones}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrialConfig(_Strict):
    """Everything one trial needs besides its data."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    hparams: HParams = Field(default_factory=HParams)

    def resolved(self) -> dict[str, Any]:
        """The full config with defaults filled in, minus keys of branches not chosen.

        This is what checkpoints and exports record; it validates again as it is.
        """
        data = self.model_dump(mode="json")
        hp = data["hparams"]
        for selector, branches in _BRANCH_KEYS.items():
            keep = set(branches[hp[selector]])
            for keys in branches.values():
                for key in keys:
                    if key not in keep:
                        hp.pop(key, None)
        return data


def _closest(key: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per problem: the dotted key, the bad value, what is accepted, the closest key."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "<config>"
        if e["type"] == "extra_forbidden":
            # walk the model tree to find the section's known keys
            section: Any = model
            for part in loc[:-1]:
                field = section.model_fields.get(part) if hasattr(section, "model_fields") else None
                section = field.annotation if field is not None else None
            known = sorted(section.model_fields) if hasattr(section, "model_fields") else []
            lines.append(f"{key}: unknown key{_closest(loc[-1], known)}; accepted: {', '.join(known)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            # a nested schema's own message already starts with its dotted key
            lines.append(f"{msg}{shown}" if msg.startswith(f"{key}.") else f"{key}: {msg}{shown}")
    return lines


def parse_trial_config(data: dict[str, Any] | TrialConfig) -> TrialConfig:
    """Validate a trial config; raise ConfigError listing every problem."""
    if isinstance(data, TrialConfig):
        return data
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError("invalid trial config:\n  " + "\n  ".join(format_validation_error(err, TrialConfig))) from None
