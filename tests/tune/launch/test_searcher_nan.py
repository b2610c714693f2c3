"""What Ray's OptunaSearch tells Optuna about trials whose objective is NaN, as a sweep sets it up.

Ray passes a trial's last result to ``study.tell(trial, value, state=COMPLETE)``. Optuna refuses a
NaN value with an exception, which Ray's OptunaSearch catches and logs as a warning: the Optuna
trial then stays RUNNING for the rest of the sweep (Ray 2.60, Optuna 5.0). boxtune therefore never
reports NaN to the searcher: an objective that cannot be measured is reported as ``NAN_SCORE``
(``trainables.objective``), so the trial completes, with the lowest score.
"""

from __future__ import annotations

import math

import optuna
import pytest

from trainables.objective import BEST_SCORE as SEARCH_METRIC
from trainables.objective import NAN_SCORE, epoch_summary, parse_objective
from tune.launch.sweep import make_sampler

_EPOCHS = 2


def _space(trial):  # module level: Ray pickles the searcher, space included, into its experiment state
    trial.suggest_categorical("kind", ["measured", "nan", "raw_nan"])


def test_reported_nan_objective_leaves_no_running_trial(tmp_path, ray_local):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    objective = parse_objective("AP")

    def trainable(config):
        # AP per epoch: NaN (nothing COCOeval could score), NaN but reported raw, or measured
        history = []
        for epoch in range(1, _EPOCHS + 1):
            ap = 0.1 * epoch if config["kind"] == "measured" else math.nan
            metrics = {"epoch": epoch, "AP": ap, "AR100": ap}
            history.append(metrics)
            metrics.update(epoch_summary(objective, metrics, history))
            if config["kind"] == "raw_nan":
                metrics.update(score=math.nan, best_score=math.nan)  # what boxtune never reports
            tune.report(metrics)

    storage = optuna.storages.InMemoryStorage()
    searcher = OptunaSearch(space=_space, metric=SEARCH_METRIC, mode="max", sampler=make_sampler("random", 1),
                            study_name="nan", storage=storage)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=9, max_concurrent_trials=2),
        run_config=tune.RunConfig(name="nan", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    trials = optuna.load_study(study_name="nan", storage=storage).trials
    assert len(trials) == 9
    by_kind: dict[str, set] = {}
    for t in trials:
        by_kind.setdefault(t.params["kind"], set()).add((t.state, t.value))
    assert set(by_kind) == {"measured", "nan", "raw_nan"}  # seed 1 draws every kind in 9 trials
    # what boxtune reports: the best epoch's score (the second epoch, AP 0.2, with its AR100
    # tiebreak), or NAN_SCORE for an objective never measured; both complete
    [(state, value)] = by_kind["measured"]
    assert state == optuna.trial.TrialState.COMPLETE and value == pytest.approx(0.2 + 0.2 * 1e-7, abs=1e-12)
    assert by_kind["nan"] == {(optuna.trial.TrialState.COMPLETE, NAN_SCORE)}
    # a raw NaN is why: Optuna refuses it, Ray logs the refusal, and the trial is left RUNNING
    assert by_kind["raw_nan"] == {(optuna.trial.TrialState.RUNNING, None)}
