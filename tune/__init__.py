"""The service: the ``boxtune`` CLI, sweep orchestration on Ray Tune, reports, export and predict."""

from tune.config import SweepConfig, TrainConfig, load_config
from tune.report import load_sweep, rank_trials
from tune.sweep import resume_sweep, run_sweep

__all__ = ["SweepConfig", "TrainConfig", "load_config", "load_sweep", "rank_trials", "resume_sweep", "run_sweep"]
