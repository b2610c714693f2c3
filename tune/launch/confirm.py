"""The confirmation stage (``search.confirm: {top: K, seeds: N}``): after the search, retrain its top
K configs with N new training seeds each, so that the ranking can take the mean over seeds.

The training seed moves a config's AP about as much as its hyperparameters do, and the search
trains each config once: its best trial is partly the luckiest draw. The stage runs as a second Ray
experiment in ``<run>/confirm`` (``tune.run.layout.CONFIRM_DIR``), on the sweep's Ray session,
with Ray's plain variant generator over a grid of its K x N (config, seed) pairs
(``tune.run.confirmation``):
no Optuna, so the search's study never hears of them (it would learn the same config twice, as if
it were new evidence), and no early stopping (every seed trains ``training.epochs``).

- **When.** Once the search has ended: every trial it asked for created and ended. A search
  interrupted (Ctrl-C) leaves the stage to ``boxtune resume``.
- **Resume.** A started stage is restored (``Tuner.restore`` of ``confirm/``), its result files cut
  back to their checkpoints first (``tune.launch.resume_logs``): finished seeds are not trained
  again, an unfinished one goes on from its checkpoint. A stage not yet started starts from the
  search's ranking, which no longer changes.
- **Checkpoints.** Every confirmation trial keeps its best epoch's checkpoint, without optimiser
  state once it finishes (``CheckpointRetention`` with ``keep_trials`` = K x N): any seed of a
  confirmed config may be the one that ships. ``checkpoints.keep_trials`` bounds the search's
  trials only, and is at least K, so the confirmed configs' search trials keep theirs.
"""

from __future__ import annotations

from trainables.data import Manifest
from tune.config import SweepConfig
from tune.launch.experiment import restore_tuner, run_config, trial_runner
from tune.launch.resume_logs import truncate_to_checkpoints
from tune.launch.trainable import confirm_trainable
from tune.run.confirmation import CONFIRM_OF, CONFIRM_SEED, confirm_seeds, confirm_top
from tune.run.folder import RunFolder
from tune.run.ranking import rank_trials
from tune.run.view import load_sweep

__all__ = ["confirm_stage"]

_ENDED = ("TERMINATED", "ERROR")


def confirm_stage(cfg: SweepConfig, folder: RunFolder, manifest: Manifest, *, echo=print) -> None:
    """Run the confirmation stage of sweep ``folder`` on the current Ray session, or resume it; nothing
    when ``search.confirm.top`` is 0 or the search has not ended. Fit inside ``_tune_environment()``."""
    if not cfg.search.confirm.top:
        return
    stage = folder.confirm_folder()
    view = load_sweep(folder.uri)
    # the search trials' sampled configs, fixed once the search has ended; with_parameters again on a restore
    trainable = trial_runner(confirm_trainable, cfg, stage.storage, manifest, costs=folder.costs(),
                             sampled={t.trial_id: t.config for t in view.trials})
    if stage.is_experiment():
        truncate_to_checkpoints(stage)  # no epoch recorded twice (as for the search)
        echo(f"resuming the confirmation stage in {stage.uri}")
        restore_tuner(stage.storage, trainable).fit()
        return
    if len(view.trials) < cfg.search.num_trials or any(t.status not in _ENDED for t in view.trials):
        echo(f"the search has not ended: the confirmation stage starts on `boxtune resume {folder.uri}`")
        return
    top = confirm_top(view, rank_trials(view, intervals=False))
    if not top:
        echo("confirmation stage: no search trial finished an epoch; nothing to confirm")
        return
    seeds = confirm_seeds(cfg.training.seed, cfg.search.confirm.seeds)
    echo(f"confirmation stage: the top {len(top)} configs on {len(seeds)} new training seeds each, "
         f"{len(top) * len(seeds)} trials of {cfg.training.epochs} epochs, results in {stage.uri}")
    _tuner(cfg, stage, trainable, top, seeds).fit()


def _tuner(cfg: SweepConfig, stage: RunFolder, trainable, top: list[str], seeds: list[int]):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from tune.launch.progress import ProgressTable
    from tune.launch.retention import CheckpointRetention

    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(),
                 ProgressTable(max_epochs=cfg.training.epochs, by_score=cfg.search.metric != "AP", stopper="-"),
                 # every seed keeps its best epoch: any of a confirmed config's seeds may ship
                 CheckpointRetention(stage.storage, keep_trials=len(top) * len(seeds))]
    return tune.Tuner(
        trainable,
        # Ray's default search: its variant generator, over the grid of (config, seed) pairs
        param_space={CONFIRM_OF: tune.grid_search(top), CONFIRM_SEED: tune.grid_search(seeds)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=cfg.max_concurrent, reuse_actors=True),
        run_config=run_config(cfg, stage.storage, callbacks),
    )
