"""Turning a sweep config's ``search_space`` entry into a define-by-run function.

A spec is one of:

* a built-in name: ``"default"``, ``"seed"``, ``"quick"`` (see :mod:`search_spaces.builtin`);
* ``"package.module:function"``, imported from ``sys.path``. The rule: if ``function`` has a
  keyword-only parameter ``max_freeze_depth`` it is a *factory*, called as
  ``function(max_freeze_depth=..., epochs=..., pretrained=...)`` (``epochs`` and ``pretrained``
  only if it takes those keywords) and returning the space; anything else is the space itself, a
  function of ``trial``;
* a mapping: the declarative form (see :mod:`search_spaces.declarative`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from search_spaces.builtin import BUILTIN_SPACES, make_space
from search_spaces.declarative import parse_space
from trainables.errors import ConfigError

__all__ = ["resolve_space", "suggest_hparams"]

Space = Callable[[Any], "dict[str, Any] | None"]


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"search_space {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any failure while importing user code is the user's to fix
        raise ConfigError(
            f"search_space {spec!r}: cannot import {module_name!r}: {type(err).__name__}: {err}"
        ) from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"search_space {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"search_space {spec!r}: {attr!r} is not callable")
    return obj


def _is_factory(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature are not factories
        return False
    p = params.get("max_freeze_depth")
    return p is not None and p.kind is inspect.Parameter.KEYWORD_ONLY


def resolve_space(spec: str | dict[str, Any], *, max_freeze_depth: int, epochs: int | None = None,
                  pretrained: bool = False) -> Space:
    """The define-by-run space for ``spec`` (see the module docstring), checked before the sweep.

    ``max_freeze_depth`` is the architecture's deepest valid ``freeze_depth``; ``epochs`` the
    run's length (None: ``TrainingConfig``'s default). Both bound built-in and declarative ranges.
    ``pretrained`` (the trials start from a trained detector) goes to the built-ins and to
    factories that take it.
    """
    if isinstance(spec, dict):
        return parse_space(spec, max_freeze_depth=max_freeze_depth, epochs=epochs)
    if not isinstance(spec, str):
        raise ConfigError(
            f"search_space: expected a built-in name, 'module:function' or a mapping, got {spec!r}"
        )
    if ":" not in spec:
        if spec in BUILTIN_SPACES:
            return make_space(spec, max_freeze_depth=max_freeze_depth, epochs=epochs, pretrained=pretrained)
        match = difflib.get_close_matches(spec, BUILTIN_SPACES, n=1, cutoff=0.5)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(
            f"search_space {spec!r}: unknown built-in{hint}; accepted: {', '.join(BUILTIN_SPACES)}, "
            "'package.module:function' or a mapping"
        )
    fn = _import(spec)
    if not _is_factory(fn):
        return fn
    kwargs: dict[str, Any] = {"max_freeze_depth": max_freeze_depth}
    params = inspect.signature(fn).parameters
    if "epochs" in params:
        kwargs["epochs"] = epochs
    if "pretrained" in params:
        kwargs["pretrained"] = pretrained
    space = fn(**kwargs)
    if not callable(space):
        raise ConfigError(f"search_space {spec!r}: the factory returned {type(space).__name__}, not a space")
    return space


def suggest_hparams(space: Space, trial: Any) -> dict[str, Any]:
    """The hyperparameters one trial gets: what ``space`` suggested plus the constants it returned.

    This is how Ray Tune's OptunaSearch merges a define-by-run result; use it wherever a space is
    run outside Ray (``optuna`` directly, tests).
    """
    constants = space(trial)
    if constants is not None and not isinstance(constants, dict):
        raise ConfigError(
            f"search space returned {type(constants).__name__}; expected a dict of constants or None"
        )
    return {**trial.params, **(constants or {})}
