"""The one place ``trainables`` talks to Ray: reporting and resuming through public ``ray.tune`` names.

Ray's reporting API has moved several times; when it moves again, only this module changes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RayReporter"]


class RayReporter:
    """Reports with ``ray.tune.report(metrics, checkpoint=...)`` and resumes from ``ray.tune.get_checkpoint()``.

    ``extra`` is merged into every report (the host's facts, such as the node a trial runs on);
    the loop's own metrics win on a name clash.
    """

    def __init__(self, *, extra: Mapping[str, Any] | None = None) -> None:
        from ray import tune

        self._tune = tune
        self._extra = dict(extra or {})
        self._restored: Path | None = None
        self._trial_dir = self._working_dir()

    def _working_dir(self) -> Path:
        """The trial's working directory on this node: the folder Tune copies to the trial's folder in
        storage (``SyncConfig(sync_artifacts=True)``) at every checkpoint and when the trial ends.

        Not ``get_context().get_trial_dir()``: in a fresh worker process that is the driver's staging
        folder, which is copied to storage only on the driver's node (in a reused process it is the
        working directory). Tune changes into the working directory before a trial starts.
        """
        working = Path.cwd()
        name = Path(self._tune.get_context().get_trial_dir()).name
        if working.name != name:
            from trainables.errors import TrainingError

            raise TrainingError(
                f"trial {name} runs in {working}, not in its working directory, so its TensorBoard events "
                f"would never reach storage: unset RAY_CHDIR_TO_TRIAL_DIR=0"
            )
        return working

    def add_extra(self, extra: Mapping[str, Any]) -> None:
        """Merge ``extra`` into every report from now on."""
        self._extra.update(extra)

    @property
    def trial_dir(self) -> Path:
        return self._trial_dir

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self._tune.get_checkpoint()
        if checkpoint is None:
            return None
        # copy out of Ray's storage (which may be remote) into a local folder the loop can read
        self._restored = Path(tempfile.mkdtemp(prefix="boxtune-restore-"))
        return Path(checkpoint.to_directory(str(self._restored)))

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self._tune.report({**self._extra, **metrics}, checkpoint=self._tune.Checkpoint.from_directory(str(checkpoint_dir)))
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None
