"""The end of a sweep, after its last trial: the trained models' timing, the test split, the HParams
experiment, the ranking.

The sweep folder is loaded once (``tune.run.load_sweep``); the test split's numbers join that view
before the ranking is written, so ``ranking.parquet`` carries them.
"""

from __future__ import annotations

from typing import Any

from tune.results.holdout import evaluate_sweep_on_test
from tune.results.tensorboard import write_hparams_experiment
from tune.results.trained_costs import time_trained_models
from tune.run.ranking import write_ranking
from tune.run.view import SweepView, load_sweep

__all__ = ["finish_sweep"]


def finish_sweep(run: str, manifest, *, echo=print) -> tuple[SweepView, list[dict[str, Any]]]:
    """Time the kept trials' trained models (``cost.trained``), write the sweep's HParams experiment,
    evaluate its top trials on the test split (if any) and write ``ranking.parquet``; return the
    view and the ranking rows (best first)."""
    view = load_sweep(run)
    cfg = view.config
    # first, on idle cores; a trained latency can change which trials meet search.constraints, and so the top
    time_trained_models(view, manifest, echo=echo)
    write_hparams_experiment(view)
    # without a test split the ranking's notes say that val AP is optimistic (tune.results.report.sweep_notes)
    evaluate_sweep_on_test(view, manifest, top=cfg.report.test_top, metric_label=view.objective.label,
                           gpu=cfg.resources.gpu, echo=echo)
    return view, write_ranking(view)
