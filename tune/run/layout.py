"""Every file name in a run folder, in one place: what a sweep folder holds and where.

A sweep folder (``<storage>/<name>``, local or behind a URI)::

    sweep.yaml            the sweep's config, whole, defaults filled in (``RunFolder.config``)
    manifest.parquet      the records and split every trial trained and was evaluated on
    boxtune.json          versions, creation time, the Ray address
    ranking.parquet       the ranking, written when the sweep ends (``tune.run.ranking``)
    test_results.json     the top trials' best epochs on the test split (``tune.results.holdout``)
    retention.json        which checkpoints were deleted and why (``tune.launch.retention``)
    costs.json            each model structure's latency, parameters and size (``cost.measure``; ``tune.launch.costs``)
    trained_costs.json    each kept trial's best checkpoint timed after the trials ended, on the val images
                          (``cost.trained``; ``tune.results.trained_costs``)
    node_losses.jsonl     one JSON line per trial whose Ray node was lost, written by the driver as it
                          notices (``tune.launch.node_loss``); ``boxtune status`` shows the open ones
    ray_output.log        Ray's own output about a lost node (the trial's traceback, Ray's result box,
                          the raylet's and GCS's dumps), kept off the terminal (``tune.launch.worker_logs``)
    optuna.journal        the search's Optuna study, as Optuna's journal file: one JSON line per change,
                          written as the search goes (``tune.run.study``); optuna-dashboard and
                          ``optuna.load_study`` read it, while the sweep runs and after
    *.boxtune-hparams     the sweep's TensorBoard HParams experiment (``tune.results.tensorboard``)
    tuner.pkl, experiment_state-*.json, basic-variant-state-*.json, searcher-state-*.pkl   Ray Tune's
    <trial folder>/       one per trial, named by Ray:
        result.json, progress.csv, params.json, error.txt     Ray Tune's
        checkpoint_000003/checkpoint.pt                       Ray's checkpoint folders
        attempts.jsonl, failure.json                          the trial's record (``tune.launch.trial_record``)
        ray_train.log                                         Ray Train's INFO lines
        detections/epoch_0003.parquet                         each epoch's val detections (``trainables.detections``)
        events.out.tfevents.*                                 the trial's TensorBoard events (and, after the
                                                              sweep, its trained timing: *.boxtune-trained-cost)
    confirm/              the confirmation stage (``search.confirm``), a second Ray experiment:
        tuner.pkl, experiment_state-*.json, ...               Ray Tune's, as above
        retention.json                                        its checkpoint record (every trial keeps its best epoch)
        <trial folder>/                                       one per (config, seed), as above

A ``boxtune train`` folder (``--out``) holds the trial's own files, named in ``trainables.files``
(re-exported here: ``metrics.jsonl``, ``best.json``, ``checkpoints/epoch_NNNN/``, ``detections/``),
and what the command adds (``tune.run.folder.TrainFolder``)::

    train.json            the run's threads, device and objective
    manifest.parquet      the records and split it trained and was evaluated on
    test_results.json     its best epoch on the test split (``tune.results.holdout``)
"""

from __future__ import annotations

from trainables.files import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CHECKPOINTS_DIR,
    DETECTIONS_DIR,
    METRICS_FILE,
    detections_file,
    epoch_checkpoint_dir,
)

__all__ = [
    "SWEEP_FILE", "MANIFEST_FILE", "INFO_FILE", "RANKING_FILE", "TEST_RESULTS_FILE", "RETENTION_FILE", "COSTS_FILE", "TRAINED_COSTS_FILE",
    "NODE_LOSS_FILE", "RAY_OUTPUT_FILE", "HPARAMS_EVENTS_SUFFIX", "TRAINED_COST_EVENTS_SUFFIX", "STUDY_FILE", "TUNER_FILE", "CONFIRM_DIR", "RESULT_FILE", "PROGRESS_FILE", "ERROR_FILE", "ATTEMPTS_FILE", "FAILURE_FILE",
    "RAY_LOG_FILE", "CHECKPOINT_FOLDER_PREFIX", "STORAGE_PROBE_PREFIX", "CHECKPOINT_FILE", "METRICS_FILE", "BEST_FILE", "CHECKPOINTS_DIR",
    "epoch_checkpoint_dir", "DETECTIONS_DIR", "detections_file", "TEST_SPLIT", "TEST_PREFIX", "TRAIN_INFO_FILE",
]

# the sweep folder
SWEEP_FILE = "sweep.yaml"
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "boxtune.json"
RANKING_FILE = "ranking.parquet"
TEST_RESULTS_FILE = "test_results.json"
RETENTION_FILE = "retention.json"
COSTS_FILE = "costs.json"
TRAINED_COSTS_FILE = "trained_costs.json"
NODE_LOSS_FILE = "node_losses.jsonl"  # a lost node's trials, as the driver noticed them
RAY_OUTPUT_FILE = "ray_output.log"  # Ray's output on the driver that the terminal is spared
STUDY_FILE = "optuna.journal"  # Optuna's JournalStorage file (optuna.storages.journal.JournalFileBackend)
HPARAMS_EVENTS_SUFFIX = ".boxtune-hparams"  # marks the experiment event file, so a rewrite replaces only it
TRAINED_COST_EVENTS_SUFFIX = ".boxtune-trained-cost"  # a trial's trained timing (cost/trained_*), written after the sweep
TUNER_FILE = "tuner.pkl"  # Ray Tune's: an experiment's Tuner, what Tuner.restore reads
CONFIRM_DIR = "confirm"  # the confirmation stage's Ray experiment, inside the sweep folder

# in the storage root (beside the sweep folders), for the seconds of the check that every node sees
# the same storage (tune.launch.storage_check); a random suffix follows, and the file goes at once
STORAGE_PROBE_PREFIX = ".boxtune-storage-probe-"

# a `boxtune train` folder, besides the trial's own files and MANIFEST_FILE, TEST_RESULTS_FILE
TRAIN_INFO_FILE = "train.json"

# a trial folder in a sweep
RESULT_FILE = "result.json"  # Ray Tune's, one JSON line per reported epoch
PROGRESS_FILE = "progress.csv"  # Ray Tune's, the same as CSV
ERROR_FILE = "error.txt"  # Ray Tune's, the traceback of an errored trial
ATTEMPTS_FILE = "attempts.jsonl"
FAILURE_FILE = "failure.json"
RAY_LOG_FILE = "ray_train.log"
CHECKPOINT_FOLDER_PREFIX = "checkpoint_"  # Ray's checkpoint folders: checkpoint_000003

# the held-out split, and the names its numbers are shown under (test_AP, test_AR100, test_AP[cat], ...)
TEST_SPLIT = "test"
TEST_PREFIX = "test_"
