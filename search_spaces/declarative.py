"""Search spaces written as data (a YAML mapping), validated up front and compiled to define-by-run.

Each key is an ``HParams`` field; each value is a constant or a mapping with one kind::

    optimizer: {choice: [sgd, adam]}           # categorical
    lr: {loguniform: [1.0e-4, 1.0e-1]}         # float, log scale
    momentum: {uniform: [0.8, 0.99], when: {optimizer: sgd}}
    eps: {float: [1.0e-9, 1.0e-6], log: true}  # float: [low, high] or [low, high, step]; log optional
    freeze_depth: {int: [0, 4]}                # int: [low, high] or [low, high, step]; log optional
    step_size: {int: [2, 5, 1], when: {schedule: step}}
    milestones: {value: [6, 8], when: {schedule: multistep}}   # a constant under a condition
    batch_size: 2                              # a constant
    architecture: {choice: [ssdlite320_mobilenet_v3_large, fasterrcnn_mobilenet_v3_large_fpn]}

``architecture`` and ``image_size`` are not ``HParams`` fields: the sweep moves them into the
trial's model section. ``architecture`` is a choice (or constant) of ``ARCHITECTURES``, applied
with that architecture's ``model.by_architecture`` settings; it can be a ``when`` parent like any
choice. ``image_size`` (an int or a choice of ints, px) sets ``min_size`` and ``max_size`` both:
the longer side of every image is resized to it. SSDlite's size is fixed (320), so a space that
mixes it with other architectures samples ``image_size`` ``when`` the others are chosen::

    image_size: {choice: [256, 320, 416], when: {architecture: [fasterrcnn_mobilenet_v3_large_fpn]}}

``when`` maps earlier ``choice`` keys to a value or a list of values; the key is sampled only when
every condition holds. Problems are found before any trial runs, all at once, each naming its
key: an unknown key (with the closest name), an unknown kind, a bad range or a value the schema
rejects, a ``when`` on anything but an earlier choice, and a branch parameter (momentum, gamma,
...) that could be sampled outside its branch.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from trainables.architectures import ARCHITECTURES
from trainables.config import _BRANCH_KEYS, HParams, ModelConfig  # the schema the space must produce
from trainables.errors import ConfigError

__all__ = ["KINDS", "DeclarativeSpace", "parse_space"]

KINDS = ("choice", "uniform", "loguniform", "float", "int", "value")
_OPTIONS = ("when", "log")
_FLOAT_KINDS = ("uniform", "loguniform", "float")
# searchable, though they live in the model section, not in HParams (see tune.trial_config.merge_trial_config)
_MODEL_KEYS = ("architecture", "image_size")


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # one of KINDS; a bare constant is kind "value"
    args: tuple  # choice: options; ranges: (low, high); value: (constant,)
    step: float | None = None
    log: bool = False
    when: tuple[tuple[str, tuple], ...] = ()


class DeclarativeSpace:
    """A validated declarative space as an Optuna define-by-run function of ``trial``."""

    def __init__(self, params: tuple[_Param, ...]):
        self.params = params

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        chosen: dict[str, Any] = {}  # categorical values drawn so far, for `when`
        constants: dict[str, Any] = {}
        for p in self.params:
            if not all(k in chosen and chosen[k] in values for k, values in p.when):
                continue
            if p.kind == "choice":
                chosen[p.name] = trial.suggest_categorical(p.name, list(p.args))
            elif p.kind == "int":
                trial.suggest_int(p.name, p.args[0], p.args[1], step=int(p.step or 1), log=p.log)
            elif p.kind in _FLOAT_KINDS:
                trial.suggest_float(p.name, p.args[0], p.args[1], step=p.step, log=p.log)
            else:
                value = p.args[0]
                constants[p.name] = list(value) if isinstance(value, (list, tuple)) else value
        return constants or None

    def __repr__(self) -> str:
        return f"DeclarativeSpace({', '.join(p.name for p in self.params)})"


@cache
def _adapter(key: str) -> TypeAdapter:
    if key == "architecture":
        return TypeAdapter(typing.Literal[ARCHITECTURES])  # type: ignore[valid-type]
    if key == "image_size":  # min_size = max_size: the bounds of both
        low = ModelConfig.model_fields["min_size"]
        return TypeAdapter(Annotated[(int, *low.metadata)])
    field = HParams.model_fields[key]
    if not field.metadata:
        return TypeAdapter(field.annotation)
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)])


def _schema_problem(key: str, value: Any) -> str | None:
    """Why HParams would reject ``value`` for ``key`` (validated as the trial will), or None."""
    try:
        _adapter(key).validate_python(value)
    except ValidationError as err:
        return f"{value!r} is not a valid {key}: {err.errors()[0]['msg']}"
    return None


def _field_type(key: str) -> str:
    if key == "architecture":
        return "categorical"
    if key == "image_size":
        return "int"
    ann = HParams.model_fields[key].annotation
    if ann is bool or typing.get_origin(ann) is typing.Literal:
        return "categorical"
    if typing.get_origin(ann) is list:
        return "list"
    return {int: "int", float: "float"}.get(ann, "categorical")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _parse_range(key: str, kind: str, spec: dict, problems: list[str]) -> tuple[tuple, float | None, bool]:
    args = spec[kind]
    log = spec.get("log", kind == "loguniform")
    if not isinstance(args, (list, tuple)) or len(args) not in (2, 3) or not all(map(_is_number, args)):
        problems.append(f"{key}: {kind} takes [low, high] or [low, high, step] numbers, got {args!r}")
        return (), None, False
    if kind in ("uniform", "loguniform") and len(args) == 3:
        problems.append(f"{key}: {kind} takes [low, high]; for a step use float: [low, high, step]")
    if kind == "int" and not all(isinstance(a, int) for a in args):
        problems.append(f"{key}: int takes integers, got {list(args)}")
    low, high, step = args[0], args[1], (args[2] if len(args) == 3 else None)
    if not isinstance(log, bool) or ("log" in spec and kind in ("uniform", "loguniform")):
        problems.append(
            f"{key}: log applies to int and float only, as true or false, got {spec.get('log')!r}"
        )
    if not low < high:
        problems.append(f"{key}: {kind} needs low < high, got [{low}, {high}] (a single value is a constant)")
    elif log and low <= 0:
        problems.append(f"{key}: a log-scale range needs low > 0, got {low}")
    elif step is not None and (
        step <= 0 or log or abs(round((high - low) / step) * step - (high - low)) > 1e-9
    ):
        problems.append(f"{key}: step {step} must be > 0, without log, and divide high - low = {high - low}")
    problems.extend(
        f"{key}: {p}" for p in filter(None, (_schema_problem(key, low), _schema_problem(key, high)))
    )
    return (low, high), step, bool(log)


def _parse_param(key: str, raw: Any, earlier: dict[str, _Param], problems: list[str]) -> _Param | None:
    ftype = _field_type(key)
    if not isinstance(raw, dict):
        spec: dict = {"value": raw}
    else:
        spec = raw
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in KINDS and k not in _OPTIONS]
    for k in unknown:
        match = difflib.get_close_matches(str(k), KINDS + _OPTIONS, n=1, cutoff=0.6)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        problems.append(f"{key}: unknown kind {k!r}{hint}; accepted: {', '.join(KINDS)}")
    if len(kinds) != 1:
        if not unknown:
            problems.append(f"{key}: needs exactly one kind of {', '.join(KINDS)}, got {kinds or 'none'}")
        return None
    kind = kinds[0]
    when = _parse_when(key, spec.get("when", {}), earlier, problems)
    if kind in ("choice", "value") and "log" in spec:
        problems.append(f"{key}: log applies to int and float only, not {kind}")
    if kind == "value":
        value = spec["value"]
        if ftype == "list" and isinstance(value, tuple):
            value = list(value)
        problem = _schema_problem(key, value)
        if problem:
            problems.append(f"{key}: {problem}")
        return _Param(key, "value", (value,), when=when)
    if kind == "choice":
        options = spec["choice"]
        if not isinstance(options, list) or not options or len(set(map(repr, options))) != len(options):
            problems.append(f"{key}: choice takes a non-empty list of distinct values, got {options!r}")
            return None
        problems.extend(f"{key}: {p}" for p in filter(None, (_schema_problem(key, o) for o in options)))
        if ftype == "list":
            problems.append(f"{key}: a list cannot be a choice; give a constant (value) per branch")
        return _Param(key, "choice", tuple(options), when=when)
    if ftype in ("categorical", "list") or (ftype == "int" and kind != "int"):
        takes = {"int": "an integer (use int or choice)", "list": "a list (use a constant)"}
        problems.append(f"{key}: takes {takes.get(ftype, 'one of fixed values (use choice)')}, not {kind}")
        return None
    args, step, log = _parse_range(key, kind, spec, problems)
    return _Param(key, kind, args, step=step, log=log, when=when) if args else None


def _parse_when(key: str, when: Any, earlier: dict[str, _Param], problems: list[str]) -> tuple:
    if not isinstance(when, dict):
        problems.append(f"{key}: when takes a mapping of earlier choice keys to values, got {when!r}")
        return ()
    parsed = []
    for parent, values in when.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        p = earlier.get(parent)
        if p is None or p.kind != "choice":
            what = "not an earlier key" if p is None else f"an earlier {p.kind}, not a choice"
            problems.append(f"{key}: when refers to {parent!r}, which is {what}")
            continue
        never = [v for v in values if v not in p.args]
        if never:
            problems.append(
                f"{key}: when {parent} in {list(never)} never holds; {parent} choices: {list(p.args)}"
            )
        parsed.append((parent, values))
    return tuple(parsed)


def _possible(selector: str, params: dict[str, _Param]) -> set:
    p = params.get(selector)
    if p is None:
        return {HParams.model_fields[selector].default}
    values = set(p.args) if p.kind == "choice" else {p.args[0]}
    return values | ({HParams.model_fields[selector].default} if p.when else set())


def _check_branches(params: dict[str, _Param], problems: list[str]) -> None:
    """A branch parameter must be conditioned so it is never drawn outside its branch."""
    for selector, branches in _BRANCH_KEYS.items():
        for key, p in params.items():
            owners = {b for b, keys in branches.items() if key in keys}
            if not owners:
                continue
            possible = _possible(selector, params)
            for parent, values in p.when:
                if parent == selector:
                    possible &= set(values)
            outside = sorted(map(str, possible - owners))
            if outside:
                problems.append(
                    f"{key}: applies only to {selector} {'/'.join(sorted(owners))} but can be sampled "
                    f"with {selector} {', '.join(outside)}; add when: {{{selector}: {sorted(owners)}}}"
                )


def _values(p: _Param) -> list:
    return list(p.args) if p.kind == "choice" else [p.args[0]] if p.kind == "value" else [p.args[1]]


def _check_run_bounds(
    params: dict[str, _Param], *, max_freeze_depth: int | None, epochs: int | None, problems: list[str]
) -> None:
    if max_freeze_depth is not None and "freeze_depth" in params:
        top = max(_values(params["freeze_depth"]))
        if top > max_freeze_depth:
            problems.append(
                f"freeze_depth: reaches {top}, above this architecture's maximum {max_freeze_depth}"
            )
    if epochs is not None and "step_size" in params:
        top = max(_values(params["step_size"]))
        if top >= epochs:
            problems.append(f"step_size: reaches {top}, which never acts in a run of {epochs} epochs")
    if epochs is not None and "milestones" in params:
        bad = [m for ms in _values(params["milestones"]) for m in ms if not 1 <= m < epochs]
        if bad:
            problems.append(f"milestones: {bad} never act in a run of {epochs} epochs")
    warmup = params.get("warmup_iters")
    if warmup is not None and max(_values(warmup)) > 0:
        possible = _possible("schedule", params)
        possible &= set(dict(warmup.when).get("schedule", possible))
        if "onecycle" in possible:
            problems.append(
                "warmup_iters: can be > 0 with schedule onecycle; add when: {schedule: [...]} without onecycle"
            )


def parse_space(
    data: dict[str, Any],
    *,
    max_freeze_depth: int | None = None,
    epochs: int | None = None,
    prefix: str = "search_space.",
) -> DeclarativeSpace:
    """Validate a declarative space and compile it; ConfigError lists every problem.

    With ``max_freeze_depth`` and ``epochs`` (fixed per sweep), ranges that the trial would reject
    for this architecture or run length are problems too.
    """
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{prefix.rstrip('.')}: a declarative space is a non-empty mapping, got {data!r}")
    problems: list[str] = []
    params: dict[str, _Param] = {}
    fields = sorted([*HParams.model_fields, *_MODEL_KEYS])
    for key, raw in data.items():
        if key not in fields:
            match = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            problems.append(f"{key}: unknown hyperparameter{hint}; accepted: {', '.join(fields)}")
            continue
        p = _parse_param(key, raw, params, problems)
        if p is not None:
            params[key] = p
    if not problems:
        _check_branches(params, problems)
        _check_run_bounds(params, max_freeze_depth=max_freeze_depth, epochs=epochs, problems=problems)
    if problems:
        raise ConfigError("invalid search space:\n  " + "\n  ".join(prefix + p for p in problems))
    return DeclarativeSpace(tuple(params.values()))
