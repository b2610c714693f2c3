"""Early stopping replayed: what each stopping rule saves, and which winners it loses.

Separate sweeps diverge once TPE's random start-up ends, so two sweeps under two rules say little
about the rules. This replays ONE sweep run without early stopping (``scheduler.name: fifo``, every
trial trained to the end, every epoch's val detections stored) through each rule, on the same
per-epoch scores, as if the rule had been running:

* ``halving``: batch halving (``tune.launch.halving``), batches of ``--batch`` in creation order;
  each rung decided with the scheduler's own functions (``tune.launch.evidence.kept_by_score``,
  ``kept_on_evidence``).
* ``asha``: Ray's ASHA bracket itself, fed the results in the order the FIFO sweep reported them
  (``tune.launch.evidence.EvidenceASHA`` for the interval rule; each trial is a stand-in that
  carries only its id).

Each with ``stop_on: score`` (the point estimate) and ``stop_on: interval`` (stop only when the
upper end of the trial's 95% interval lies below the cutoff too), at each ``--graces``.

For every rule: epochs trained (and saved against FIFO), whether the rule stops FIFO's winner
before its best epoch, the winner it would crown, and how many of the trials within noise of
FIFO's winner (the ranking's paired bootstrap, ``tune.run.intervals``) it stops. Intervals are
computed from the stored detections exactly as the trainable reports them (``objective_high``),
so folders from before that key existed replay too.

With a confirmation stage in the folder (``search.confirm``), it also says whether the search's
winner, one seed, is the config with the best mean over seeds, and how often one seed alone would
have crowned the mean's winner.

    python benchmarks/bench_transfer.py --part 3 --schedulers fifo --keep K     # the transfer target
    python benchmarks/bench_stopping.py K/runs/fifo [RUN ...] --out stopping.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@dataclass
class Curve:
    number: int  # creation order
    trial_id: str
    dir_name: str  # the trial's folder in the run folder
    scores: list[float]  # per epoch, epoch 1 first
    highs: list[float]  # the upper end of each epoch's 95% interval on the objective
    times: list[float]  # when each epoch was reported (Ray's timestamp, time_total_s)


def read_curves(run: str) -> tuple[list[Curve], dict]:
    """Every trial's per-epoch score and interval from a FIFO sweep folder, and the ranking's view
    of noise: FIFO's winner and the trials within noise of it (at their best epochs)."""
    from trainables.intervals import LEVEL, percentile_interval
    from trainables.objective import score_of
    from tune.run.intervals import PairedSamples, paired_intervals
    from tune.run.view import load_sweep

    view = load_sweep(run)
    paired = PairedSamples(run)
    curves = []
    for t in sorted(view.trials, key=lambda t: t.number):
        rows = [r for r in t.history if "AP" in r]
        if not rows:  # errored before its first epoch: no rung ever sees it
            continue
        highs = []
        for r in rows:
            samples = paired.samples(t.dir_name, int(r["epoch"]))
            if samples is None:
                raise SystemExit(f"{run}: trial {t.trial_id} has no stored detections for epoch {r['epoch']}; "
                                 "replay needs every epoch's (a sweep run with --keep, no checkpoint pruning of them)")
            highs.append(percentile_interval(samples, LEVEL)[1])
        curves.append(Curve(t.number, t.trial_id, t.dir_name, [score_of(r, view.objective) for r in rows], highs,
                            [(float(r.get("timestamp", 0)), float(r.get("time_total_s", 0))) for r in rows]))
    best = {c.trial_id: max(range(len(c.scores)), key=lambda e: (c.scores[e], e)) + 1 for c in curves}
    order = sorted(curves, key=lambda c: (-c.scores[best[c.trial_id] - 1], c.number))
    samples = {c.trial_id: paired.samples(c.dir_name, best[c.trial_id]) for c in curves}
    intervals = paired_intervals(samples, [c.trial_id for c in order], images=len(view.manifest().records("val")))
    return curves, {"winner": order[0].trial_id, "best_epoch": best,
                    "within_noise": [t for t in intervals.tied_with_leader() if t != order[0].trial_id],
                    "val_images": intervals.images}


def replay_halving(curves: list[Curve], *, grace: int, reduction_factor: float, batch: int, stop_on: str) -> dict[str, int]:
    """Trial id -> the epoch batch halving stops it at (absent: trains to the end)."""
    from tune.launch.evidence import kept_by_score, kept_on_evidence
    from tune.launch.halving import rungs

    epochs = max(len(c.scores) for c in curves)
    stopped: dict[str, int] = {}
    by_number = {c.number: c for c in curves}
    batches: dict[int, list[int]] = {}  # by creation number, as the scheduler forms them (a trial that
    for c in sorted(curves, key=lambda c: c.number):  # errored before its first epoch leaves a gap)
        batches.setdefault((c.number - 1) // batch, []).append(c.number)
    for members in batches.values():
        for rung in rungs(grace=grace, reduction_factor=reduction_factor, max_t=epochs):
            alive = [n for n in members if by_number[n].trial_id not in stopped and len(by_number[n].scores) >= rung]
            if not alive:
                continue
            scores = {n: by_number[n].scores[rung - 1] for n in alive}
            highs = {n: by_number[n].highs[rung - 1] for n in alive}
            going_on = (kept_on_evidence(scores, highs, reduction_factor) if stop_on == "interval"
                        else kept_by_score(scores, reduction_factor))
            stopped.update({by_number[n].trial_id: rung for n in alive if n not in going_on})
    return stopped


class _Trial:
    """What ASHA reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def replay_asha(curves: list[Curve], *, grace: int, reduction_factor: float, stop_on: str) -> dict[str, int]:
    """Trial id -> the epoch ASHA stops it at, its results fed in the order the sweep reported them."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from tune.launch.evidence import EvidenceASHA

    epochs = max(len(c.scores) for c in curves)
    kind = EvidenceASHA if stop_on == "interval" else ASHAScheduler
    asha = kind(time_attr="epoch", metric="score", mode="max", max_t=epochs, grace_period=grace,
                reduction_factor=reduction_factor)
    trials = {c.trial_id: _Trial(c.trial_id) for c in curves}
    for c in sorted(curves, key=lambda c: c.number):
        asha.on_trial_add(None, trials[c.trial_id])
    events = sorted((c.times[e], c.number, e) for c in curves for e in range(len(c.scores)))
    by_number = {c.number: c for c in curves}
    stopped: dict[str, int] = {}
    for _, number, e in events:
        c = by_number[number]
        if c.trial_id in stopped or e + 1 >= epochs:
            continue
        action = asha.on_trial_result(None, trials[c.trial_id],
                                      {"epoch": e + 1, "score": c.scores[e], "objective_high": c.highs[e]})
        if action == TrialScheduler.STOP:
            stopped[c.trial_id] = e + 1
    return stopped


def outcome(curves: list[Curve], stopped: dict[str, int], noise: dict) -> dict:
    """What a rule's stops cost: epochs trained, the winner it crowns, the near-winners it loses."""
    full = sum(len(c.scores) for c in curves)
    trained = {c.trial_id: stopped.get(c.trial_id, len(c.scores)) for c in curves}
    best = {c.trial_id: max(c.scores[: trained[c.trial_id]]) for c in curves}
    crowned = min(curves, key=lambda c: (-best[c.trial_id], c.number)).trial_id
    lost = [t for t in noise["within_noise"] if trained[t] < noise["best_epoch"][t]]
    return {"epochs": sum(trained.values()), "epochs_saved": round(1 - sum(trained.values()) / full, 3),
            "stopped": len(stopped), "winner_stopped_before_best": trained[noise["winner"]] < noise["best_epoch"][noise["winner"]],
            "crowned": crowned, "crowned_fifo_winner": crowned == noise["winner"],
            "best_score": round(best[crowned], 4),
            "within_noise_stopped_before_best": len(lost), "within_noise": len(noise["within_noise"])}


def replay(run: str, *, graces: list[int], reduction_factor: float, batch: int) -> dict:
    curves, noise = read_curves(run)
    fifo_best = max(max(c.scores) for c in curves)
    out = {"run": run, "trials": len(curves), "epochs": sum(len(c.scores) for c in curves),
           "val_images": noise["val_images"], "fifo_winner": noise["winner"], "fifo_best_score": round(fifo_best, 4),
           "within_noise_of_winner": len(noise["within_noise"]), "rules": {}}
    for grace in graces:
        for stop_on in ("score", "interval"):
            out["rules"][f"halving grace {grace} {stop_on}"] = outcome(
                curves, replay_halving(curves, grace=grace, reduction_factor=reduction_factor, batch=batch,
                                       stop_on=stop_on), noise)
            out["rules"][f"asha grace {grace} {stop_on}"] = outcome(
                curves, replay_asha(curves, grace=grace, reduction_factor=reduction_factor, stop_on=stop_on), noise)
    out["seed_winners"] = seed_winners(run)
    return out


def seed_winners(run: str) -> dict | None:
    """With a confirmation stage (``search.confirm``): is the search's winner (one seed, the luckiest
    of the draws it won) the config with the best mean over seeds, and how often does one seed alone
    crown the mean's winner? None without the stage."""
    from trainables.objective import score_of
    from tune.run.confirmation import seed_members
    from tune.run.view import load_sweep

    view = load_sweep(run)
    if view.confirm is None:
        return None
    confirmed = sorted({str(t.config["confirm_of"]) for t in view.confirm.trials})
    per_seed: dict[str, dict[int, float]] = {}  # config -> training seed -> best score
    for config in confirmed:
        per_seed[config] = {seed: score_of(trial.best(view.objective), view.objective)
                            for _, trial, seed in seed_members(view, config) if trial.best(view.objective) is not None}
    seeds = sorted(set.intersection(*(set(v) for v in per_seed.values())))
    mean = {c: sum(v[s] for s in seeds) / len(seeds) for c, v in per_seed.items()}
    mean_winner = max(confirmed, key=lambda c: mean[c])
    by_seed = {s: max(confirmed, key=lambda c: per_seed[c][s]) for s in seeds}
    return {"configs": len(confirmed), "seeds": seeds,
            "scores": {c: [round(per_seed[c][s], 4) for s in seeds] for c in confirmed},
            "mean": {c: round(m, 4) for c, m in mean.items()}, "mean_winner": mean_winner,
            "search_winner_is_mean_winner": by_seed[seeds[0]] == mean_winner,
            "single_seed_winner_is_mean_winner": f"{sum(w == mean_winner for w in by_seed.values())} of {len(seeds)}"}


def _print(result: dict) -> None:
    print(f"{result['run']}: {result['trials']} trials, {result['epochs']} epochs, {result['val_images']} val images; "
          f"FIFO's winner {result['fifo_winner']} (score {result['fifo_best_score']}), "
          f"{result['within_noise_of_winner']} more within noise of it")
    print(f"  {'rule':<28} {'epochs':>6} {'saved':>6} {'winner stopped':>15} {'crowns FIFO winner':>19} "
          f"{'best':>7} {'within noise lost':>18}")
    for name, r in result["rules"].items():
        print(f"  {name:<28} {r['epochs']:>6} {r['epochs_saved']:>6.0%} {str(r['winner_stopped_before_best']):>15} "
              f"{str(r['crowned_fifo_winner']):>19} {r['best_score']:>7.4f} "
              f"{r['within_noise_stopped_before_best']:>11} of {r['within_noise']}")
    seeds = result.get("seed_winners")
    if seeds:
        print(f"  confirmation: {seeds['configs']} configs x seeds {seeds['seeds']} (the search's own first); "
              f"mean winner {seeds['mean_winner']}; the search's winner is it: {seeds['search_winner_is_mean_winner']}; "
              f"one seed alone crowns it in {seeds['single_seed_winner_is_mean_winner']} seeds")
        for config, scores in seeds["scores"].items():
            print(f"    {config}: {scores}  mean {seeds['mean'][config]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="sweep folders run with scheduler fifo, every epoch's detections kept")
    p.add_argument("--graces", type=int, nargs="+", default=[2, 3], help="grace periods to replay, epochs")
    p.add_argument("--reduction-factor", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=4, help="halving's batch (scheduler.batch)")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    results = [replay(run, graces=args.graces, reduction_factor=args.reduction_factor, batch=args.batch)
               for run in args.runs]
    for result in results:
        _print(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(not math.isnan(r["fifo_best_score"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
