"""Sweep and train config files: one YAML, validated whole before any work (or Ray) starts.

Every problem gets one line naming the key, the bad value and what is accepted, with the closest
key for a typo. ``--set key.path=value`` on the command line overrides single keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import HParams, ModelConfig, TrainingConfig, format_validation_error
from trainables.errors import ConfigError
from trainables.objective import COST_OBJECTIVES, accuracy_metric, cost_objectives, parse_objective

__all__ = [
    "DataConfig",
    "SearchConfig",
    "ConfirmConfig",
    "Bound",
    "CostConfig",
    "ReportConfig",
    "SchedulerConfig",
    "ResourcesConfig",
    "CheckpointsConfig",
    "MlflowConfig",
    "TrackingConfig",
    "SweepConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "SAMPLERS",
]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """The user's dataset: read and validated once per sweep into a Parquet manifest."""

    # a dataset folder (COCO, VOC or YOLO, found by content), a COCO .json, a YOLO data.yaml, or a
    # prebuilt manifest .parquet
    path: str
    format: Literal["auto", "coco", "voc", "yolo"] = "auto"
    images_dir: str | None = None  # COCO and VOC: where the image files are, when not found beside the annotations
    val_path: str | None = None  # an explicit validation set in the same format
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    test_path: str | None = None  # an explicit test set in the same format (never trained on)
    test_fraction: float = Field(default=0.0, ge=0, lt=1)  # of all images, drawn from train; 0: no test split
    strict: bool = False  # a JPEG cut short or an undecodable image is an error instead of repaired / left out
    seed: int = 0  # split seed: same inputs and seed give the same split, byte for byte
    classes: list[str] | None = None  # keep only these classes (boxes of others are dropped and counted)
    rename: dict[str, str] = Field(default_factory=dict)


class ConfirmConfig(_Strict):
    """The confirmation stage (``tune.launch.confirm``): after the search, the ``top`` configs of the
    ranking are trained again with ``seeds`` new training seeds each, and rank by the mean over
    their seeds (the search trial's own seed counts as one). ``top: 0``: no confirmation stage."""

    top: int = Field(default=0, ge=0, le=1000)
    seeds: int = Field(default=2, ge=1, le=100)  # new seeds per config: training.seed + 1 .. training.seed + seeds


class Bound(_Strict):
    """One limit of ``search.constraints``: a trial's figure must be <= ``max`` and >= ``min``."""

    max: float | None = Field(default=None, allow_inf_nan=False)
    min: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_at_least(self) -> Bound:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both, e.g. {max: 30}")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g}): no trial could meet it")
        return self


class SearchConfig(_Strict):
    space: str | dict[str, Any] = "default"  # built-in name, "module:function", or a declarative mapping
    num_trials: int = Field(default=20, ge=1, le=100_000)
    sampler: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    seed: int = 0
    # what the sweep maximises on the val split, with AR100 as the tiebreak (trainables.objective):
    # AP, AP50, AP75, AR100, APs, APm, APl, AP[class], or a mapping of these to weights; or a list
    # of one of these and what to minimise beside it, [AP, latency_ms] (also params, file_mb,
    # onnx_latency_ms): a multi-objective search whose ranking marks the Pareto front (tune.run.front)
    metric: str | dict[str, float] | list[str | dict[str, float]] = "AP"
    # limits on what a trial's model costs, e.g. {latency_ms: {max: 30}}: a trial outside them is
    # trained and recorded, marked infeasible, told to the sampler as such, and never wins
    constraints: dict[str, Bound] = Field(default_factory=dict)
    # retrain the top configs on new training seeds after the search (off by default: top 0)
    confirm: ConfirmConfig = Field(default_factory=ConfirmConfig)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | dict[str, float] | list) -> str | dict[str, float] | list:
        parse_objective(v, key=None)  # syntax now; classes and measurability once the manifest is built
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: dict[str, Bound]) -> dict[str, Bound]:
        import difflib

        for name in v:
            if name not in COST_OBJECTIVES:
                close = difflib.get_close_matches(name, COST_OBJECTIVES, n=1, cutoff=0.5)
                raise ValueError(f"{name!r} cannot be limited{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                 f"constraints limit what a model costs: {', '.join(COST_OBJECTIVES)}")
        return v

    @property
    def costs(self) -> tuple[str, ...]:
        """The cost figures the search reads: its cost objectives, then any other constrained one."""
        named = cost_objectives(self.metric)
        return named + tuple(k for k in self.constraints if k not in named)

    def key_naming(self, cost: str) -> str:
        """The config key that names ``cost``: ``search.metric`` when it is an objective, else ``search.constraints``."""
        return "search.metric" if cost in cost_objectives(self.metric) else "search.constraints"

    @model_validator(mode="after")
    def _confirm_within_trials(self) -> SearchConfig:
        if self.confirm.top > self.num_trials:
            raise ValueError(f"search.confirm.top: {self.confirm.top} is more than search.num_trials "
                             f"({self.num_trials}); confirm at most the trials the search runs")
        return self


class ReportConfig(_Strict):
    # the top trials (by the objective on val) whose best epoch is evaluated once on the test split
    test_top: int = Field(default=1, ge=0, le=1000)


class SchedulerConfig(_Strict):
    # halving: successive halving decided per batch of trials in creation order, so the same seed
    # gives the same stops and configs whatever order results arrive in (tune.launch.halving); on
    # idle cores it ran 1.34x the trials per hour of asha on the demo (benchmarks/bench_schedulers.py)
    # and 1.22x on a 12-trial transfer sweep (bench_transfer.py --part 3);
    # asha: Ray's asynchronous successive halving, each rung decided as results arrive;
    # fifo: no early stopping
    name: Literal["asha", "halving", "fifo"] = "halving"
    # epochs every trial gets before it may be stopped; None: 2 when the trials start from a trained
    # detector (model.weights), half of training.epochs from random weights, whose first epochs'
    # AP is near 0 for every trial and ranks nothing (tune.launch.sweep.grace_period)
    grace_period: int | None = Field(default=None, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)
    # what a rung stops a trial on (asha and halving; tune.launch.evidence). interval: only when it is
    # below the cutoff and so is the upper end of its 95% interval over the val images, so a trial
    # within noise of the cutoff goes on; score: the point estimate alone, as ASHA has it
    stop_on: Literal["interval", "score"] = "interval"
    # halving only: trials decided together at each rung, and sampled together; it does not follow
    # max_concurrent, so a sweep run 2 or 8 at a time gives the same trials
    batch: int = Field(default=4, ge=1, le=10_000)


class ResourcesConfig(_Strict):
    cpu: float = Field(default=1.0, gt=0)  # per trial; also the trial's torch threads (rounded to the nearest, at least 1)
    gpu: float = Field(default=0.0, ge=0)  # per trial; 0.5 puts two trials on one GPU

    @field_validator("gpu")
    @classmethod
    def _one_card_at_most(cls, v: float) -> float:
        # a trial trains on cuda:0 of what Ray gives it; more would hold GPUs it never uses
        if v > 1:
            raise ValueError(f"a trial trains on one GPU, so {v:g} would hold {v - 1:g} more that stay idle; "
                             "use 1 (trials then run side by side, one per GPU) or a fraction (several per GPU)")
        return v


class CheckpointsConfig(_Strict):
    """How much of a sweep's checkpoints stay on disk (see tune.launch.retention)."""

    # trials that keep a checkpoint once they end, best first by the objective; the rest keep
    # metrics, events and config only. A finished trial keeps one checkpoint, without optimiser state.
    keep_trials: int = Field(default=5, ge=1, le=100_000)


class MlflowConfig(_Strict):
    """An MLflow tracking server the sweep logs to: one parent run, one child run per trial
    (``tune.launch.mlflow_tracking``). No ``uri``: nothing is logged."""

    uri: str | None = None  # the tracking URI: http://host:5000, https://..., or a local sqlite:///path.db
    experiment: str = "boxtune"  # created when missing

    @field_validator("uri", "experiment")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _installed(self) -> MlflowConfig:
        import importlib.util

        if self.uri is not None and importlib.util.find_spec("mlflow") is None:
            raise ValueError("needs the mlflow package, which is not installed: pip install 'boxtune[mlflow]'")
        return self


class CostConfig(_Strict):
    """What each model the space can produce costs to run (``tune.launch.costs``), measured before the
    trials start: latency at batch 1 on CPU (median of ``repeats`` after ``warmup``, on ``threads``
    threads), parameters and the export's size, added to every trial's results and the ranking."""

    measure: bool = False
    threads: int = Field(default=1, ge=1, le=256)
    warmup: int = Field(default=3, ge=0, le=1000)
    repeats: int = Field(default=20, ge=1, le=10_000)
    onnx: bool = True  # also time the ONNX export in ONNX Runtime, where the onnx extra is installed
    # once the trials end, time each kept trial's best checkpoint on the val images (tune.results.trained_costs):
    # the ranking, the front, the limits and export --pick then read the trained figure where there is one
    trained: bool = True


class TrackingConfig(_Strict):
    """Experiment trackers the sweep also logs to (its run folder stays the record)."""

    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


class SweepConfig(_Strict):
    name: str = "sweep"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    # constants merged under every sampled config (the space's own constants win)
    hparams: dict[str, Any] = Field(default_factory=dict)
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_concurrent: int = Field(default=2, ge=1, le=10_000)
    storage: str = "boxtune_runs"  # a local folder, or a URI Ray storage accepts (s3://, gs://, ...)
    # re-runs of a crashed trial (or one on a lost node), from its last checkpoint; a ConfigError,
    # DataError or non-finite loss repeats on every try and is not re-run (tune.launch.trial_record)
    retries: int = Field(default=1, ge=0, le=100)
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    cost: CostConfig = Field(default_factory=CostConfig)

    @model_validator(mode="after")
    def _costs_measured(self) -> SweepConfig:
        """A cost named in search.metric or search.constraints turns ``cost.measure`` on (an explicit
        false is an error); several objectives need a sampler that can weigh them."""
        named = self.search.costs
        if not named:
            return self
        where = self.search.key_naming
        if not self.cost.measure and "measure" in self.cost.model_fields_set:
            raise ValueError(f"{where(named[0])} names {named[0]}, which only cost.measure measures; "
                             f"remove cost.measure: false")
        if "onnx_latency_ms" in named and not self.cost.onnx:
            raise ValueError(f"{where('onnx_latency_ms')} names onnx_latency_ms, which cost.onnx: false leaves unmeasured")
        self.cost.measure = True
        if cost_objectives(self.search.metric) and self.search.sampler == "cmaes":
            raise ValueError(f"search.sampler: cmaes optimises one objective, and search.metric names "
                             f"{len(cost_objectives(self.search.metric)) + 1}; use one of tpe, random, gp, qmc")
        return self

    @model_validator(mode="after")
    def _keep_test_top(self) -> SweepConfig:
        # the trials evaluated on the test split are read from their checkpoints after the sweep
        if self.checkpoints.keep_trials < self.report.test_top:
            raise ValueError(f"checkpoints.keep_trials ({self.checkpoints.keep_trials}) must be >= report.test_top "
                             f"({self.report.test_top}): the trials evaluated on the test split need their checkpoints")
        # a confirmed config may ship its search trial's checkpoint (tune.run.confirmation)
        if self.checkpoints.keep_trials < self.search.confirm.top:
            raise ValueError(f"checkpoints.keep_trials ({self.checkpoints.keep_trials}) must be >= search.confirm.top "
                             f"({self.search.confirm.top}): a confirmed config may ship its search trial's checkpoint")
        return self

    @field_validator("hparams")
    @classmethod
    def _known_hparams(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            HParams.model_validate(v)  # each constant must be a valid hyperparameter on its own
        except ValidationError as err:
            raise ValueError("; ".join(format_validation_error(err, HParams, prefix="hparams."))) from None
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\:") or v.startswith("."):
            raise ValueError(f"name must be a plain folder name, got {v!r}")
        return v


class TrainConfig(_Strict):
    """``boxtune train``: one trial with fixed hyperparameters."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    hparams: HParams = Field(default_factory=HParams)
    metric: str | dict[str, float] = "AP"  # picks the best epoch, as search.metric does in a sweep (one objective)
    # torch intra-op threads; a sweep trial uses resources.cpu (rounded to the nearest, at least 1). CPU float sums depend
    # on it, so a sweep trial's best-config records it. ``--threads`` wins; None: the CPUs the process may use
    threads: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, v: Any) -> Any:
        if isinstance(v, list):
            raise ValueError(f"boxtune train trains one model, with nothing to weigh its cost against: several objectives ({v}) are for a sweep's "
                             f"search.metric; give the accuracy objective alone here, e.g. {accuracy_metric(v, key='metric')}")
        parse_objective(v, key=None)
        return v


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to a config mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def _local_path(value: Any, base: Path) -> Any:
    """``~`` expanded, then a relative path made relative to ``base``; URIs and non-strings unchanged."""
    if not isinstance(value, str) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Data, weights and storage paths: ``~`` is the user's home, and relative paths are relative to
    the config file's folder (not to wherever boxtune was started)."""
    if "storage" in data:
        data["storage"] = _local_path(data["storage"], base)
    section = data.get("data")
    if isinstance(section, dict):
        for key in ("path", "images_dir", "val_path", "test_path"):
            if key in section:
                section[key] = _local_path(section[key], base)
    model = data.get("model")
    if isinstance(model, dict):
        per_arch = model.get("by_architecture")
        sections = [model, *(per_arch.values() if isinstance(per_arch, dict) else ())]
        for section in (s for s in sections if isinstance(s, dict)):
            weights = section.get("weights")
            # a file, not a torchvision weights name such as DEFAULT
            if isinstance(weights, str) and (weights.endswith((".pth", ".pt")) or "/" in weights or weights.startswith("~")):
                section["weights"] = _local_path(weights, base)


def load_config(path: str | Path | None, schema: type[BaseModel], *, overrides: list[str] = (),
                data: dict[str, Any] | None = None) -> Any:
    """Read a YAML config (or take ``data``), apply overrides, validate; ConfigError lists every problem."""
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config ({err.strerror})") from err
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
        _resolve_paths(data, path.parent)
    data = apply_overrides(dict(data or {}), list(overrides))
    if overrides:  # a path given on the command line: ``~`` is home, a relative one is from where boxtune runs
        _resolve_paths(data, Path.cwd())
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        lines = format_validation_error(err, schema)
        raise ConfigError(f"{where}: {len(lines)} problem{'s' if len(lines) > 1 else ''}:\n  " + "\n  ".join(lines)) from None
