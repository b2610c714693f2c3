"""The one ranking key: a chosen objective on the val split, with AR100 as the tiebreak.

``search.metric`` (``metric`` for ``boxtune train``) names what a sweep maximises:

* one COCO number: ``AP`` (the default), ``AP50``, ``AP75``, ``AR100``, ``APs``, ``APm``, ``APl``;
* one class's number: ``AP[raccoon]`` (also ``AP50[...]``, ``AP75[...]``, ``AR100[...]``), the
  class named as in the manifest;
* a weighted mix, ``{AP: 0.9, AP50: 0.1}``: the sum of weight * term (weights > 0, not
  normalised), terms from the same vocabulary;
* several objectives, a list: one accuracy objective (either form above) and what the model costs
  to run, minimised: ``[AP, latency_ms]`` (``COST_OBJECTIVES``, measured by ``cost.measure``).
  Everything here that ranks, stops early or picks a best epoch reads the accuracy objective
  alone (``parse_objective`` returns it); ``cost_objectives`` names the costs, which the sweep's
  searcher minimises beside it and the ranking's Pareto front weighs (``tune.run.front``).

Ray's ASHA rungs, OptunaSearch and CheckpointConfig each take one scalar, so every epoch reports
``score``, which folds the tiebreak into the objective::

    score = round(objective, 6) + AR100 * 1e-7      # AR100 in [0, 1]

Objectives equal to 6 decimals are ordered by AR100 (to about 1e-9); objectives that differ by
1e-6 or more are ordered by the objective alone, since the AR100 term stays below 1e-7. Sorting by
``score`` is therefore sorting by (objective to 1e-6, AR100), in Ray, in Optuna and in our
ranking alike. An objective that cannot be measured (NaN: COCOeval had nothing to score) gets
``NAN_SCORE`` = -1.0, below every measured objective (those are >= 0), so Ray and Optuna never see
NaN and a trial never stays RUNNING in Optuna for want of a value.

A trial's best epoch is the epoch with the highest score, the latest of equal ones: Ray's
checkpoint keeping replaces a kept checkpoint by a later one of equal score, so the epoch we call
best is the one whose checkpoint survives. ``best_score`` is that epoch's score and ranks trials.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainables.errors import ConfigError

__all__ = [
    "METRICS",
    "CLASS_METRICS",
    "NAN_SCORE",
    "SCORE",
    "BEST_SCORE",
    "OBJECTIVE_DIGITS",
    "TIEBREAK_SCALE",
    "AREA_RANGES",
    "Objective",
    "Term",
    "COST_OBJECTIVES",
    "parse_objective",
    "cost_objectives",
    "accuracy_metric",
    "class_key",
    "class_metrics",
    "fold_score",
    "score_of",
    "best_epoch",
    "epoch_summary",
    "check_measurable",
]

METRICS = ("AP", "AP50", "AP75", "AR100", "APs", "APm", "APl")
CLASS_METRICS = ("AP", "AP50", "AP75", "AR100")  # per class, from COCOeval's arrays (area "all", 100 dets)
NAN_SCORE = -1.0  # the score of an epoch whose objective is NaN; measured objectives are >= 0
OBJECTIVE_DIGITS = 6  # the objective's resolution in the score: 1e-6
TIEBREAK_SCALE = 1e-7  # AR100 in [0, 1] adds at most 1e-7, below one objective step
# COCOeval's area ranges (px^2, bounds inclusive): a box outside its stat's range is ignored there
# The result keys that rank. Every epoch reports both (``epoch_summary``): Ray's ASHA rungs and its
# checkpoint keeping compare an epoch's SCORE; the searcher, retention, the live table, the
# ranking and the export compare a trial's BEST_SCORE (its best epoch's score).
SCORE = "score"
BEST_SCORE = "best_score"
AREA_RANGES = {"APs": (0.0, 32.0**2), "APm": (32.0**2, 96.0**2), "APl": (96.0**2, 1e5**2)}

# a model's cost figures that can be objectives or constraints: result keys of trainables.cost's
# COST_COLUMNS (every result carries them under cost.measure), all minimised
COST_OBJECTIVES = ("latency_ms", "onnx_latency_ms", "params", "file_mb")

_TERM = re.compile(r"^\s*([A-Za-z0-9]+)\s*(?:\[(.+)\])?\s*$")
_ACCEPTED = f"{', '.join(METRICS)}, {'/'.join(CLASS_METRICS)}[class], or a mapping of these to weights > 0"


def class_key(stat: str, class_name: str) -> str:
    """The result key of one class's number: ``AP[raccoon]``."""
    return f"{stat}[{class_name}]"


@dataclass(frozen=True)
class Term:
    """One weighted term of an objective: a COCO number, overall or of one class."""

    metric: str
    class_name: str | None = None
    weight: float = 1.0

    @property
    def key(self) -> str:
        """The epoch-metrics key this term reads."""
        return self.metric if self.class_name is None else class_key(self.metric, self.class_name)


@dataclass(frozen=True)
class Objective:
    """A parsed objective. ``value`` reads an epoch's metrics; ``score`` adds the AR100 tiebreak."""

    terms: tuple[Term, ...]
    key: str = "search.metric"  # the config key it came from, for error messages

    @property
    def label(self) -> str:
        """``AP`` for a single unweighted term, else ``0.9*AP + 0.1*AP50``."""
        if len(self.terms) == 1 and self.terms[0].weight == 1.0:
            return self.terms[0].key
        return " + ".join(f"{t.weight:g}*{t.key}" for t in self.terms)

    @property
    def keys(self) -> tuple[str, ...]:
        """The metric keys the objective reads (per-class keys included)."""
        return tuple(t.key for t in self.terms)

    @property
    def class_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.class_name is not None)

    def value(self, metrics: Mapping[str, Any]) -> float:
        """The objective of one epoch's metrics; NaN when any term is missing or NaN."""
        total = 0.0
        for term in self.terms:
            v = as_number(metrics.get(term.key))
            if math.isnan(v):
                return math.nan
            total += term.weight * v
        return total

    def score(self, metrics: Mapping[str, Any]) -> float:
        """The folded ranking scalar of one epoch (see the module docstring)."""
        return fold_score(self.value(metrics), metrics.get("AR100"))


def as_number(value: Any) -> float:
    """``value`` as a finite float, or NaN (for None, a bool, text, inf or NaN)."""
    if isinstance(value, bool):
        return math.nan
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def fold_score(objective: Any, ar100: Any) -> float:
    """``round(objective, 6) + AR100 * 1e-7``; ``NAN_SCORE`` for a NaN objective; a NaN AR100 adds 0."""
    obj = as_number(objective)
    if math.isnan(obj):
        return NAN_SCORE
    ar = as_number(ar100)
    ar = 0.0 if math.isnan(ar) else min(max(ar, 0.0), 1.0)
    return round(obj, OBJECTIVE_DIGITS) + ar * TIEBREAK_SCALE


def score_of(row: Mapping[str, Any], objective: Objective | None = None) -> float:
    """An epoch's reported ``score``, or (for results from before scores were reported) the one computed."""
    v = as_number(row.get(SCORE))
    if not math.isnan(v):
        return v
    return (objective or _DEFAULT).score(row)


def best_epoch(history: Iterable[Mapping[str, Any]], objective: Objective | None = None) -> Mapping[str, Any] | None:
    """The epoch with the highest score (the latest of equal ones, as Ray keeps); None for an empty history."""
    best, best_s = None, -math.inf
    for row in sorted(history, key=lambda r: int(r.get("epoch", 0))):
        s = score_of(row, objective)
        if s >= best_s:  # a later epoch of equal score wins, like Ray's CheckpointConfig
            best, best_s = row, s
    return best


def epoch_summary(objective: Objective, metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The keys every epoch reports besides its COCO numbers.

    ``history`` holds the epochs so far, this one included (each already carrying its ``score``).
    """
    best = best_epoch(history, objective)
    assert best is not None, "history includes the current epoch"
    return {
        "objective": objective.value(metrics),
        SCORE: objective.score(metrics),
        BEST_SCORE: score_of(best, objective),
        "best_objective": objective.value(best),
        "best_epoch": int(best["epoch"]),
        "best_AP": float(best["AP"]),
        "best_AR100": float(best["AR100"]),
    }


def class_metrics(per_class: Mapping[int, Mapping[str, float]], classes: Sequence[Any],
                  objective: Objective | None = None) -> dict[str, float]:
    """An epoch's per-class keys: ``AP[name]`` and ``AR100[name]`` of every class, in the manifest's
    class order, plus any other per-class number ``objective`` reads (``AP50[name]``).

    ``per_class`` maps dataset category id -> stats (``trainables.coco_eval.per_class_stats``);
    ``classes`` are the manifest's (``name``, ``dataset_id``).
    """
    extra = {(t.class_name, t.metric) for t in (objective.class_terms if objective else ())}
    out: dict[str, float] = {}
    for c in classes:
        name, stats = str(_field(c, "name")), per_class.get(int(_field(c, "dataset_id")), {})
        for stat in CLASS_METRICS:
            if stat in ("AP", "AR100") or (name, stat) in extra:
                out[class_key(stat, name)] = float(stats.get(stat, math.nan))
    return out


def _closest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _fail(key: str | None, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}" if key else message)


def _term(text: Any, weight: float, key: str | None) -> Term:
    if not isinstance(text, str):
        raise _fail(key, f"expected a metric name, got {text!r}; accepted: {_ACCEPTED}")
    match = _TERM.match(text)
    if match is None:
        raise _fail(key, f"cannot read {text!r} as a metric; accepted: {_ACCEPTED}")
    metric, class_name = match.group(1), match.group(2)
    if class_name is None:
        if metric not in METRICS:
            raise _fail(key, f"unknown metric {metric!r}{_closest(metric, METRICS)}; accepted: {_ACCEPTED}")
        return Term(metric, None, weight)
    if metric not in CLASS_METRICS:
        raise _fail(key, f"{text!r}: {metric!r} has no per-class form{_closest(metric, CLASS_METRICS)}; "
                         f"per-class metrics: {', '.join(CLASS_METRICS)}")
    return Term(metric, class_name.strip(), weight)


def parse_objective(spec: str | Mapping[str, Any] | Objective, *, key: str | None = "search.metric") -> Objective:
    """A metric name or a {term: weight} mapping as an ``Objective``; ConfigError naming ``key`` and the bad term.

    Class names are checked against a manifest later, by ``check_measurable``.
    """
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, list | tuple):
        return parse_objective(_split(spec, key)[0], key=key)
    if isinstance(spec, str):
        if spec.strip() in COST_OBJECTIVES:
            raise _fail(key, f"{spec.strip()} is what a model costs to run, not an accuracy: name it beside one, "
                             f"as a list such as [AP, {spec.strip()}], or limit it with search.constraints")
        return Objective((_term(spec, 1.0, key),), key or "metric")
    if isinstance(spec, Mapping):
        if not spec:
            raise _fail(key, f"an empty mapping; accepted: {_ACCEPTED}")
        terms = []
        for text, weight in spec.items():
            w = as_number(weight)
            if math.isnan(w) or w <= 0:
                raise _fail(key, f"weight of {text!r} must be a finite number > 0, got {weight!r}")
            terms.append(_term(text, w, key))
        seen = [t.key for t in terms]
        dupes = sorted({k for k in seen if seen.count(k) > 1})
        if dupes:
            raise _fail(key, f"{', '.join(dupes)} given more than once")
        return Objective(tuple(terms), key or "metric")
    raise _fail(key, f"expected a metric name or a mapping of metric names to weights, got {spec!r}; accepted: {_ACCEPTED}")


def accuracy_metric(spec: Any, *, key: str | None = "search.metric") -> str | Mapping[str, Any]:
    """The accuracy objective of a metric spec as its config form: a list's one accuracy element, else itself."""
    return _split(spec, key)[0] if isinstance(spec, list | tuple) else spec


def cost_objectives(spec: Any, *, key: str | None = "search.metric") -> tuple[str, ...]:
    """The cost names of a list ``search.metric``, in its order; () for a single objective."""
    if isinstance(spec, list | tuple):
        return _split(spec, key)[1]
    return ()


def _split(spec: list | tuple, key: str | None) -> tuple[Any, tuple[str, ...]]:
    """A list metric as (its accuracy objective, its cost names); ConfigError for anything else."""
    costs, accuracy = [], []
    for item in spec:
        if isinstance(item, str) and item.strip() in COST_OBJECTIVES:
            if item.strip() in costs:
                raise _fail(key, f"{item.strip()} given more than once")
            costs.append(item.strip())
            continue
        try:
            parse_objective(item, key=key)
        except ConfigError:
            if isinstance(item, str) and (close := _closest(item.strip(), COST_OBJECTIVES)):
                raise _fail(key, f"unknown objective {item.strip()!r}{close}") from None
            raise
        accuracy.append(item)
    if len(accuracy) != 1:
        found = ", ".join(repr(a) for a in accuracy) or "none"
        raise _fail(key, f"a list needs exactly one accuracy objective ({_ACCEPTED}) and one or more of "
                         f"{', '.join(COST_OBJECTIVES)}; its accuracy objectives: {found}")
    if not costs:
        raise _fail(key, f"a list of one objective: write it without the list (search.metric: {accuracy[0]}), "
                         f"or add what to minimise beside it: {', '.join(COST_OBJECTIVES)}")
    return accuracy[0], tuple(costs)


_DEFAULT = Objective((Term("AP"),))


def _field(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def _evaluated(record: Any) -> tuple[list[int], list[float], list[bool]]:
    """Category ids, areas and ignore flags of the boxes evaluation scores (crowd and VOC difficult ignored).

    Records carry their annotations as annotated in ``eval_*`` fields (what COCOeval sees); plain
    ``category_ids``/``iscrowd``/``area`` records are read as they are.
    """
    prefix = "eval_" if _has(record, "eval_category_ids") else ""
    ids = [int(c) for c in _field(record, f"{prefix}category_ids")]
    areas = [float(a) for a in _field(record, f"{prefix}area")]
    ignored = [bool(c) for c in _field(record, f"{prefix}iscrowd")]
    if prefix and _has(record, "eval_difficult"):
        ignored = [c or bool(d) for c, d in zip(ignored, _field(record, "eval_difficult"), strict=True)]
    return ids, areas, ignored


def _has(record: Any, name: str) -> bool:
    return name in record if isinstance(record, Mapping) else hasattr(record, name)


def check_measurable(objective: Objective, records: Iterable[Any], classes: Sequence[Any], *, split: str = "val") -> None:
    """ConfigError unless every term can be measured on ``records`` (the split that picks epochs).

    A term needs a box that is neither crowd nor VOC difficult in its COCO area range (``AREA_RANGES``; any size for the others)
    and, for a class term, of that class. ``classes`` are the manifest's (``name``, ``dataset_id``).
    """
    by_name = {str(_field(c, "name")): int(_field(c, "dataset_id")) for c in classes}
    for term in objective.class_terms:
        if term.class_name not in by_name:
            raise ConfigError(f"{objective.key}: {term.key!r}: unknown class {term.class_name!r}"
                              f"{_closest(term.class_name, by_name)}; classes: {', '.join(by_name)}")
    counts: dict[str, int] = {t.key: 0 for t in objective.terms}
    for record in records:
        ids, areas, ignored = _evaluated(record)
        for term in objective.terms:
            lo, hi = AREA_RANGES.get(term.metric, (0.0, math.inf))
            want = by_name[term.class_name] if term.class_name is not None else None
            counts[term.key] += sum(1 for i, a, skip in zip(ids, areas, ignored, strict=True)
                                    if not skip and lo <= a <= hi and (want is None or i == want))
    for term in objective.terms:
        if counts[term.key]:
            continue
        if term.class_name is not None:
            why = f"the {split} split has no box of class {term.class_name!r}"
        elif term.metric in AREA_RANGES:
            lo, hi = AREA_RANGES[term.metric]
            why = f"the {split} split has no box with area in [{lo:g}, {hi:g}] px^2 (COCO's range for {term.metric})"
        else:
            why = f"the {split} split has no box to evaluate"
        raise ConfigError(f"{objective.key}: {term.key} cannot be measured: {why}; choose another metric")
