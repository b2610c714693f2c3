"""What a sweep searches: Optuna define-by-run spaces producing ``trainables.config.HParams``.

Built-ins (``default``, ``seed``, ``quick``, and :func:`make_space` for an architecture's
``max_freeze_depth``), declarative spaces from YAML (:func:`parse_space`), and
:func:`resolve_space`, which turns a sweep config's ``search_space`` entry into a space.
"""

from search_spaces.builtin import (
    BUILTIN_SPACES,
    RESNET50_FPN_MAX_FREEZE_DEPTH,
    default,
    first_trials,
    make_space,
    quick,
    seed,
    to_hparams,
)
from search_spaces.declarative import KINDS, DeclarativeSpace, parse_space
from search_spaces.registry import resolve_space, suggest_hparams

__all__ = [
    "BUILTIN_SPACES",
    "KINDS",
    "RESNET50_FPN_MAX_FREEZE_DEPTH",
    "DeclarativeSpace",
    "default",
    "first_trials",
    "make_space",
    "parse_space",
    "quick",
    "resolve_space",
    "seed",
    "suggest_hparams",
    "to_hparams",
]
