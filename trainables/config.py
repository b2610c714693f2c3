"""The trial's config schema: what one trial needs, validated before any work starts.

A trial config has three parts:

* ``model``: architecture, weights and the class-to-COCO mapping for the pruned head (fixed for a
  sweep, unless the space searches ``architecture``: see ``ModelConfig.by_architecture``);
* ``training``: epochs, seed, loader workers, AMP, image logging (fixed for a sweep);
* ``hparams``: what a search space samples, one flat mapping with stable names.

Hyperparameters that belong to one branch of another (momentum only for SGD, ``step_size`` only
for the step schedule) are errors when set on another branch: in a sweep, a knob that silently
does nothing wastes trials. Which architectures exist, and which model keys each family uses, is
``trainables.architectures``' catalogue, which the validators here check against.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.architectures import ARCHITECTURES, FAMILIES, FAMILY_MODEL_KEYS, SIZED_KEYS
from trainables.errors import ConfigError
from trainables.objective import parse_objective

__all__ = [
    "resolve_model_section",
    "OPTIMIZERS",
    "SCHEDULES",
    "ModelConfig",
    "TrainingConfig",
    "HParams",
    "TrialConfig",
    "format_validation_error",
    "parse_trial_config",
]

_OVERRIDABLE_KEYS = ("weights", *SIZED_KEYS)  # what by_architecture may set per architecture
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
    """Which detector, which weights, and how the COCO head is cut to the dataset's classes.

    A key the chosen family does not use (``FAMILY_MODEL_KEYS``) is an error when set to anything
    but its default, as any knob that would silently do nothing. ``by_architecture`` holds per-architecture settings for
    a sweep whose space searches ``architecture``: ``{ssdlite320_mobilenet_v3_large: {weights:
    ...}, fasterrcnn_mobilenet_v3_large_fpn: {min_size: 320, max_size: 320}}``; each entry is
    validated as the model section that architecture's trials get (``resolve_model_section``).
    """

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
    # architecture -> settings (weights, min_size, max_size, box_batch_size_per_image) that replace
    # the ones above when a searched architecture picks it
    by_architecture: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sizes(self) -> ModelConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self

    @model_validator(mode="after")
    def _family_keys(self) -> ModelConfig:
        # a key counts as set when it differs from its default: a full dump (sweep.yaml, a
        # checkpoint's config) carries every default and must validate again as it is
        changed = {k for k in self.model_fields_set if getattr(self, k) != ModelConfig.model_fields[k].default}
        problems = _family_problems(self.architecture, changed, "")
        base = self.model_dump(mode="json", include=self.model_fields_set - {"by_architecture", "architecture"})
        for arch, settings in self.by_architecture.items():
            where = f"by_architecture.{arch}"
            if arch not in ARCHITECTURES:
                close = difflib.get_close_matches(str(arch), ARCHITECTURES, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{where}: unknown architecture{hint}; accepted: {', '.join(ARCHITECTURES)}")
                continue
            unknown = sorted(set(settings) - set(_OVERRIDABLE_KEYS))
            if unknown:
                problems.append(f"{where}: {', '.join(unknown)} cannot be set per architecture; "
                                f"accepted: {', '.join(_OVERRIDABLE_KEYS)}")
                continue
            try:
                ModelConfig.model_validate({**base, **settings, "architecture": arch})
            except ValidationError as err:
                problems += [f"{where}: {line.removeprefix('<config>: ')}"
                             for line in format_validation_error(err, ModelConfig)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _family_problems(architecture: str, keys_set: set[str], where: str) -> list[str]:
    family = FAMILIES[architecture]
    allowed = FAMILY_MODEL_KEYS[family]
    problems = []
    for key in sorted((set(keys_set) & set(SIZED_KEYS)) - set(allowed)):
        if family == "ssd":
            why = "SSDlite resizes every image to 320x320, fixed by torchvision's builder"
        else:
            why = f"{family} keys: {', '.join(allowed)}"
        problems.append(f"{where}{key} does not apply to {architecture} ({why}); remove it"
                        + (" or set it under by_architecture" if where == "" else ""))
    return problems


def resolve_model_section(model: dict[str, Any], architecture: str | None = None) -> dict[str, Any]:
    """The model section one trial gets: ``architecture`` (if given, else the section's own) with
    its ``by_architecture`` settings applied over the shared ones, and ``by_architecture`` dropped.

    Nothing is dropped silently: a shared key the chosen family does not use stays, and the trial
    schema refuses it (a sweep finds that in its preflight sampling, before Ray starts).
    """
    section = dict(model)
    per_arch = section.pop("by_architecture", None) or {}
    if architecture is None:
        architecture = section.get("architecture", ModelConfig.model_fields["architecture"].default)
    section["architecture"] = architecture
    section.update(per_arch.get(architecture, {}))
    return section


class TrainingConfig(_Strict):
    """How long and how a trial runs; fixed across a sweep."""

    epochs: int = Field(default=10, ge=1, le=1000)
    seed: int = 0
    # DataLoader processes (decoding the images the cache does not hold, and the transforms);
    # "auto": none on CPU (the model's threads need the cores), else the trial's CPU share less one, at most 8
    num_workers: int | Literal["auto"] = 0
    # decoded images kept in host memory across epochs, MiB per trial; 0 = decode every epoch
    cache_mb: int = Field(default=1024, ge=0, le=1_048_576)
    amp: bool = True  # mixed precision on CUDA (bf16 where supported); always off on CPU
    grad_clip_norm: float | None = Field(default=None, gt=0)
    image_log_every: int = Field(default=0, ge=0)  # epochs between TensorBoard image grids; 0 = off
    image_log_count: int = Field(default=4, ge=1, le=32)
    eval_batch_size: int = Field(default=4, ge=1, le=256)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 64):
            return v
        raise ValueError("expected a number of processes in [0, 64] or 'auto'")


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
    # what picks the best epoch (a sweep's search.metric); see trainables.objective
    metric: str | dict[str, float] = "AP"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | dict[str, float]) -> str | dict[str, float]:
        parse_objective(v, key=None)  # a ConfigError is a ValueError: pydantic names the key
        return v

    @model_validator(mode="after")
    def _one_architecture(self) -> TrialConfig:
        # a trial builds one architecture: its by_architecture settings apply (all of them were
        # validated with the model section), the others go
        if self.model.by_architecture:
            section = resolve_model_section(self.model.model_dump(mode="json", exclude_unset=True))
            self.model = ModelConfig.model_validate(section)
        return self

    @model_validator(mode="after")
    def _ssd_batch(self) -> TrialConfig:
        # SSDlite's extra layers and head put BatchNorm2d on a 1x1 map: one image cannot train
        # them (torch refuses a batch statistic of one value); only depth 8 freezes them all
        if FAMILIES[self.model.architecture] == "ssd" and self.hparams.batch_size == 1 and self.hparams.freeze_depth < 8:
            raise ValueError(f"hparams.batch_size 1 cannot train {self.model.architecture}: its BatchNorm layers "
                             "on the 1x1 feature map need 2 or more images per batch (or freeze_depth 8)")
        return self

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
