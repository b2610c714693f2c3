"""The one place ``trainables`` talks to Ray: reporting and resuming through public ``ray.tune`` names.

Ray's reporting API has moved several times; when it moves again, only this module changes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

__all__ = ["RayReporter"]


class RayReporter:
    """Reports with ``ray.tune.report(metrics, checkpoint=...)`` and resumes from ``ray.tune.get_checkpoint()``."""

    def __init__(self) -> None:
        from ray import tune

        self._tune = tune
        self._restored: Path | None = None

    @property
    def trial_dir(self) -> Path:
        return Path(self._tune.get_context().get_trial_dir())

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self._tune.get_checkpoint()
        if checkpoint is None:
            return None
        # copy out of Ray's storage (which may be remote) into a local folder the loop can read
        self._restored = Path(tempfile.mkdtemp(prefix="boxtune-restore-"))
        return Path(checkpoint.to_directory(str(self._restored)))

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self._tune.report(dict(metrics), checkpoint=self._tune.Checkpoint.from_directory(str(checkpoint_dir)))
        if self._restored is not None:
            shutil.rmtree(self._restored, ignore_errors=True)
            self._restored = None
