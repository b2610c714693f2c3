"""A run folder's files, each read and written in one place.

``RunFolder`` wraps a sweep folder's ``RunStorage`` (local or behind a URI) and is the one reader
and writer of each file ``tune.run.layout`` names: the saved config, the manifest, the test
results, the retention record, the ranking, the search's Optuna journal, the lost nodes' record
and the log of Ray's output about them. ``TrainFolder`` does the same for a ``boxtune train``
folder, whose trial files ``trainables.reporting.LocalReporter`` writes. Everything else asks
them, and never opens a file by a name it spelt itself.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainables.errors import ConfigError
from tune.config import SweepConfig
from tune.run import layout

if TYPE_CHECKING:  # pyarrow and the manifest (torch), loaded when a sweep folder is read
    from tune.run.storage import RunStorage

__all__ = ["RunFolder", "TrainFolder", "EMPTY_RETENTION"]

# the retention record of a sweep that has deleted nothing
EMPTY_RETENTION: dict[str, Any] = {"keep_trials": None, "deleted": {}, "kept": {}, "scores": {}, "trial_dirs": {}}


class RunFolder:
    """One sweep folder: ``RunFolder.at("runs/demo")`` or ``RunFolder.at("s3://bucket/runs/demo")``."""

    def __init__(self, storage: RunStorage):
        self.storage = storage

    @classmethod
    def at(cls, run: str) -> RunFolder:
        from tune.run.storage import RunStorage

        return cls(RunStorage.from_uri(run))

    @classmethod
    def create(cls, storage_root: str, name: str) -> RunFolder:
        """The folder a new sweep ``name`` writes under ``storage_root`` (nothing is written yet)."""
        from tune.run.storage import RunStorage

        return cls(RunStorage(storage_root, name))

    @property
    def uri(self) -> str:
        return self.storage.uri

    # -- the Ray experiments: the search's (this folder) and the confirmation stage's (confirm/) ----------
    def confirm_folder(self) -> RunFolder:
        """The confirmation stage's experiment folder, ``<run>/confirm`` (``search.confirm``)."""
        from tune.run.storage import RunStorage

        return RunFolder(RunStorage(self.uri, layout.CONFIRM_DIR))

    def is_experiment(self) -> bool:
        """Whether Ray Tune has started an experiment here (its ``tuner.pkl`` is written)."""
        return self.storage.exists(layout.TUNER_FILE)

    # -- sweep.yaml ---------------------------------------------------------------------------------
    def is_sweep(self) -> bool:
        return self.storage.exists(layout.SWEEP_FILE)

    def require_sweep(self, run: str | None = None) -> None:
        """A ConfigError unless this is a sweep folder (it holds ``sweep.yaml``)."""
        if not self.is_sweep():
            raise ConfigError(f"{run or self.uri}: not a boxtune sweep folder (no {layout.SWEEP_FILE})")

    def config(self) -> SweepConfig:
        """The sweep's own ``sweep.yaml``; a damaged or hand-broken one is a ConfigError naming the file and key."""
        from pydantic import ValidationError

        from trainables.config import format_validation_error

        self.require_sweep()
        where = f"{self.uri}/{layout.SWEEP_FILE}"
        try:
            data = yaml.safe_load(self.storage.read_text(layout.SWEEP_FILE))
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not a text file ({err.reason} at byte {err.start})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of sections at the top level, got {type(data).__name__}")
        try:
            return SweepConfig.model_validate(data)
        except ValidationError as err:
            lines = format_validation_error(err, SweepConfig)
            raise ConfigError(f"{where}: {len(lines)} problem{'s' if len(lines) > 1 else ''}: " + "; ".join(lines)) from None

    def write_config(self, cfg: SweepConfig) -> None:
        self.storage.write_text(layout.SWEEP_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    # -- manifest.parquet ---------------------------------------------------------------------------
    def manifest_uri(self) -> str:
        return f"{self.uri}/{layout.MANIFEST_FILE}"

    def write_manifest(self, manifest) -> None:
        self.storage.write_manifest(layout.MANIFEST_FILE, manifest)

    def manifest(self):
        return self.storage.read_manifest(layout.MANIFEST_FILE)

    def has_test_split(self) -> bool:
        """Whether the manifest holds test images (reads its split column only)."""
        import pyarrow.parquet as pq

        if not self.storage.exists(layout.MANIFEST_FILE):
            return False
        with self.storage.fs.open_input_file(f"{self.storage.path}/{layout.MANIFEST_FILE}") as src:
            splits = pq.read_table(src, columns=["split"]).column("split")
        return layout.TEST_SPLIT in set(splits.to_pylist())

    # -- boxtune.json -------------------------------------------------------------------------------
    def write_info(self, info: dict[str, Any]) -> None:
        self.storage.write_text(layout.INFO_FILE, json.dumps(info, indent=2))

    # -- costs.json ---------------------------------------------------------------------------------
    def costs(self) -> dict[str, dict[str, Any]] | None:
        """``costs.json``: model structure (``trainables.cost.structure_key``) -> its figures; None when not measured."""
        if not self.storage.exists(layout.COSTS_FILE):
            return None
        return json.loads(self.storage.read_text(layout.COSTS_FILE))

    def write_costs(self, costs: dict[str, dict[str, Any]]) -> None:
        self.storage.write_text(layout.COSTS_FILE, json.dumps(costs, indent=2))

    # -- trained_costs.json -------------------------------------------------------------------------
    def trained_costs(self) -> dict[str, dict[str, Any]]:
        """``trained_costs.json``: trial id -> its best checkpoint's figures (``trainables.cost``, with
        ``epoch`` and ``checkpoint``); empty when nothing was timed trained."""
        if not self.storage.exists(layout.TRAINED_COSTS_FILE):
            return {}
        return json.loads(self.storage.read_text(layout.TRAINED_COSTS_FILE))

    def write_trained_costs(self, figures: dict[str, dict[str, Any]]) -> None:
        self.storage.write_text(layout.TRAINED_COSTS_FILE, json.dumps(figures, indent=2, sort_keys=True))

    # -- test_results.json --------------------------------------------------------------------------
    def test_results(self) -> dict[str, Any] | None:
        """``test_results.json``, or None when the sweep evaluated nothing on a test split."""
        if not self.storage.exists(layout.TEST_RESULTS_FILE):
            return None
        return json.loads(self.storage.read_text(layout.TEST_RESULTS_FILE))

    def write_test_results(self, text: str) -> None:
        self.storage.write_text(layout.TEST_RESULTS_FILE, text)

    # -- retention.json -----------------------------------------------------------------------------
    def retention(self) -> dict[str, Any]:
        """``{"keep_trials", "deleted": {trial: reason}, "kept": {trial: dir}, ...}`` (empty when none)."""
        if not self.storage.exists(layout.RETENTION_FILE):
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in EMPTY_RETENTION.items()}
        return json.loads(self.storage.read_text(layout.RETENTION_FILE))

    def write_retention(self, record: dict[str, Any]) -> None:
        self.storage.write_text(layout.RETENTION_FILE, json.dumps(record, indent=2, sort_keys=True))

    # -- node_losses.jsonl -------------------------------------------------------------------------
    def node_losses(self) -> list[dict[str, Any]]:
        """One dict per trial that lost its node, in the order noticed (``tune.launch.node_loss``):
        ``{"trial", "node_id", "node_ip", "at", "epoch", "retry", "retries"}``; empty when none."""
        if not self.storage.exists(layout.NODE_LOSS_FILE):
            return []
        return [json.loads(line) for line in self.storage.read_text(layout.NODE_LOSS_FILE).splitlines() if line.strip()]

    def record_node_loss(self, entry: dict[str, Any]) -> None:
        """Add a loss to ``node_losses.jsonl``: read and rewritten whole, atomically (a bucket cannot
        append; only the driver writes it)."""
        lines = [*self.node_losses(), entry]
        self.storage.write_text(layout.NODE_LOSS_FILE, "".join(json.dumps(e) + "\n" for e in lines))

    # -- ray_output.log -----------------------------------------------------------------------------
    def ray_output_path(self) -> str:
        """The local file the driver writes Ray's diverted output to: the folder's own, or for a URI
        run folder a local copy (under the temp folder, named by the run's URI) that
        ``upload_ray_output`` copies up."""
        if not self.storage.remote:
            return f"{self.storage.path}/{layout.RAY_OUTPUT_FILE}"
        import hashlib
        import os
        import tempfile

        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "boxtune-ray-output", key, layout.RAY_OUTPUT_FILE)

    def upload_ray_output(self) -> None:
        """Copy a URI run folder's local ``ray_output.log`` to the folder (a local folder's is the file itself)."""
        if self.storage.remote and Path(self.ray_output_path()).is_file():
            self.storage.upload(self.ray_output_path(), layout.RAY_OUTPUT_FILE)

    # -- ranking.parquet ----------------------------------------------------------------------------
    def write_ranking(self, table) -> None:
        """Write a pyarrow table as ``ranking.parquet``."""
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink)
        with self.storage.fs.open_output_stream(f"{self.storage.path}/{layout.RANKING_FILE}") as out:
            out.write(sink.getvalue())

    # -- optuna.journal -----------------------------------------------------------------------------
    def journal(self):
        """The search's Optuna journal (``tune.run.study.RunJournal``), the backend of its ``JournalStorage``."""
        from tune.run.study import RunJournal

        return RunJournal(self.storage)

    # -- trial folders ------------------------------------------------------------------------------
    def trial_path(self, trial_dir_name: str) -> str:
        """A trial folder's path on the folder's filesystem (``self.storage.fs``)."""
        return f"{self.storage.path}/{trial_dir_name}"

    def trial_uri(self, trial_dir_name: str) -> str:
        return f"{self.uri}/{trial_dir_name}"

    def read_trial_file(self, trial_dir_name: str, name: str) -> str | None:
        """A text file in a trial folder, or None when it is not there (any other read error is raised)."""
        try:
            with self.storage.fs.open_input_stream(f"{self.trial_path(trial_dir_name)}/{name}") as src:
                return src.read().decode(errors="replace")
        except FileNotFoundError:
            return None

    def read_detections(self, trial_dir_name: str, epoch: int):
        """A trial epoch's stored val detections (``trainables.detections``), or None when not stored."""
        import pyarrow as pa

        from trainables.detections import read_detections

        try:
            with self.storage.fs.open_input_file(f"{self.trial_path(trial_dir_name)}/{layout.detections_file(epoch)}") as src:
                return read_detections(src)
        except (OSError, ValueError, pa.ArrowException):  # missing, not synced yet, or cut short: not stored
            return None

    def write_trial_file(self, trial_dir_name: str, name: str, text: str) -> None:
        with self.storage.fs.open_output_stream(f"{self.trial_path(trial_dir_name)}/{name}") as out:
            out.write(text.encode())


class TrainFolder:
    """A ``boxtune train`` folder (``--out``): per-epoch metrics, the best epoch, its checkpoints,
    and what the command records beside them (its threads, device and objective, the manifest)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def uri(self) -> str:
        return str(self.path.resolve())

    def is_train_run(self) -> bool:
        return (self.path / layout.METRICS_FILE).is_file()

    def require_trained(self, run: str | None = None) -> None:
        """A ConfigError unless an epoch has finished here (``best.json`` written)."""
        if not (self.path / layout.BEST_FILE).is_file():
            raise ConfigError(f"{run or self.path}: no epoch of this boxtune train run has finished yet "
                              f"(no {layout.BEST_FILE})")

    def history(self) -> list[dict[str, Any]]:
        """One dict per epoch, in order (``metrics.jsonl``); empty before the first."""
        path = self.path / layout.METRICS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def best(self) -> dict[str, Any]:
        """``best.json``: ``{"epoch": N, "metrics": {...}}``, the best epoch by score."""
        return json.loads((self.path / layout.BEST_FILE).read_text())

    def checkpoint_dir(self, epoch: int) -> Path:
        return self.path / layout.epoch_checkpoint_dir(epoch)

    def read_detections(self, epoch: int):
        """An epoch's stored val detections, or None when not stored."""
        from trainables.detections import read_detections

        path = self.path / layout.detections_file(epoch)
        return read_detections(path) if path.is_file() else None

    # -- train.json: threads, device, objective -------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``train.json`` (``{"threads", "device", "metric", "epochs"}``); empty for a folder written before it."""
        path = self.path / layout.TRAIN_INFO_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_info(self, info: dict[str, Any]) -> None:
        from trainables.atomic import atomic_write_text

        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / layout.TRAIN_INFO_FILE, json.dumps(info, indent=2))

    # -- manifest.parquet ---------------------------------------------------------------------------
    def has_manifest(self) -> bool:
        return (self.path / layout.MANIFEST_FILE).is_file()

    def manifest(self):
        from trainables.data import read_manifest

        return read_manifest(self.path / layout.MANIFEST_FILE)

    def write_manifest(self, manifest) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        manifest.write(self.path / layout.MANIFEST_FILE)

    # -- test_results.json --------------------------------------------------------------------------
    def test_results_path(self) -> Path:
        return self.path / layout.TEST_RESULTS_FILE

    def test_results(self) -> dict[str, Any] | None:
        """``{"split", "images", "epoch", "metrics"}``, or None when the run had no test split."""
        path = self.test_results_path()
        return json.loads(path.read_text()) if path.is_file() else None
