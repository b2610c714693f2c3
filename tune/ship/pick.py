"""``boxtune export --pick``: choosing the trial to ship by what it costs to run, from the ranking.

Two rules, over the ranked trials that finished an epoch, for a sweep run with ``cost.measure``
(every ranking row then has ``latency_ms``: the lower of its trained model's, where its checkpoint
was timed after the sweep, and its structure's untrained figure; ``latency_from`` says which; see
``tune.results.trained_costs``):

``fastest-tied``
    The fastest trial whose accuracy cannot be told apart from the best's: the leader and every
    trial the ranking marks ``distinguishable: False`` (the leader beats it in under 95% of paired
    bootstrap resamples of the val images; see ``tune.run.intervals``). Equal latencies go to the
    better-ranked trial. Without intervals (no trial's val detections stored) nothing can be said
    to tie with the best, and the rule is refused rather than replaced by a guess.
``max-latency=MS``
    The best-ranked trial whose latency is at most ``MS`` milliseconds.

Trials outside ``search.constraints`` (``feasible: False``) are never picked, and the leader is the
most accurate feasible trial (``tune.run.front``). A confirmed config (``search.confirm``) ships its seed closest to the mean, as ``export`` does
without ``--pick``. The choice and its reason go into the export's metadata (``pick``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainables.errors import BoxtuneError
from tune.run.front import eligible

__all__ = ["Pick", "parse_pick", "pick_row", "PICK_RULES"]

PICK_RULES = ("fastest-tied", "max-latency=MS")


@dataclass(frozen=True)
class Pick:
    rule: str  # "fastest-tied" or "max-latency"
    max_latency_ms: float | None = None


def parse_pick(text: str) -> Pick:
    """``--pick``'s value; a BoxtuneError naming the accepted forms otherwise (checked before torch loads)."""
    if text == "fastest-tied":
        return Pick("fastest-tied")
    name, sep, value = text.partition("=")
    if name == "max-latency" and sep:
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if math.isfinite(limit) and limit > 0:
            return Pick("max-latency", limit)
        raise BoxtuneError(f"--pick {text}: the latency limit should be a number of milliseconds > 0, got {value!r}")
    raise BoxtuneError(f"--pick {text}: expected one of {', '.join(PICK_RULES)}")


def _latency(row: dict[str, Any]) -> float:
    value = row.get("latency_ms")
    return math.nan if value is None else float(value)


def pick_row(rows: list[dict[str, Any]], pick: Pick, *, run: str) -> tuple[str, dict[str, Any]]:
    """The trial id to export from ranking ``rows`` (best first) and the metadata of the choice."""
    ranked = [r for r in rows if r["best_epoch"] > 0]
    if not ranked:
        raise BoxtuneError(f"{run}: no trial has finished an epoch yet; nothing to export")
    ranked = [r for r in ranked if eligible(r)]  # outside search.constraints: never picked
    if not ranked:
        raise BoxtuneError(f"--pick: no trial of {run} meets its search.constraints; choose one with --trial")
    if not any(math.isfinite(_latency(r)) for r in ranked):
        raise BoxtuneError(f"--pick: {run} has no latency figures: the sweep ran without cost.measure "
                           f"(set `cost: {{measure: true}}` in its config); export the best with no --pick")
    leader = ranked[0]
    label = "objective" if "objective" in leader else "AP"
    if pick.rule == "fastest-tied":
        if all(r.get("distinguishable") is None for r in ranked):
            raise BoxtuneError(f"--pick fastest-tied: {run}'s ranking has no intervals (its trials' val detections "
                               f"are not stored), so no trial can be said to tie with the best; use "
                               f"--pick max-latency=MS or --trial")
        tied = [leader] + [r for r in ranked[1:] if r.get("distinguishable") is False]
        chosen = min(tied, key=lambda r: (_latency(r) if math.isfinite(_latency(r)) else math.inf, tied.index(r)))
        reason = (f"the fastest of the {len(tied)} trial{'s' if len(tied) != 1 else ''} not distinguishable from the "
                  f"best ({leader['trial']}, {label} {float(leader[label]):.4f}, {_latency(leader):.1f} ms): "
                  f"{_latency(chosen):.1f} ms, {label} {float(chosen[label]):.4f}")
        extra = {"tied_with_best": [r["trial"] for r in tied]}
    else:
        limit = pick.max_latency_ms
        within = [r for r in ranked if _latency(r) <= limit]
        if not within:
            fastest = min((r for r in ranked if math.isfinite(_latency(r))), key=_latency)
            raise BoxtuneError(f"--pick max-latency={limit:g}: no trial runs within {limit:g} ms; the fastest is "
                               f"trial {fastest['trial']} at {_latency(fastest):.1f} ms")
        chosen = within[0]
        reason = (f"the most accurate of the {len(within)} trial{'s' if len(within) != 1 else ''} within "
                  f"{limit:g} ms: {_latency(chosen):.1f} ms, {label} {float(chosen[label]):.4f}, rank {chosen['rank']}")
        extra = {"max_latency_ms": limit}
    trial = chosen.get("ship") or chosen["trial"]
    return trial, {"rule": pick.rule, "trial": trial, "rank": chosen["rank"], "latency_ms": _latency(chosen),
                   "latency_from": chosen.get("latency_from"), "reason": reason, **extra}
