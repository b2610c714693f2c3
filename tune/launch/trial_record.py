"""A trial's own record in its folder in the sweep's storage: its attempts and a failure no retry can mend.

Ray retries a failed trial ``retries`` times (``FailureConfig.max_failures``), whatever the
exception: it cannot tell a lost node from a config the trainable rejects. Retries are for
crashes and lost nodes. A failure that is the same on every try (a ``ConfigError``, a
``DataError``, a non-finite loss, which repeats at the same seed) is written to ``failure.json``
in the trial's folder in storage, so a retry, on whichever node, reads it and raises the same
error at once instead of training the same epochs again.

``attempts.jsonl`` gets one line per start of the trial function: the worker's PID and node, the
checkpoint it resumed from (None for a fresh start), and whether it only re-raised a recorded
failure. Both files are written through the sweep's storage (a shared folder or a bucket), not
the worker's local trial folder, so they survive the node.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from trainables.errors import ConfigError, DataError, NonFiniteLossError, OutOfMemoryError
from tune.run.layout import ATTEMPTS_FILE, FAILURE_FILE
from tune.run.storage import RunStorage

__all__ = ["DETERMINISTIC_ERRORS", "TrialRecord"]

# the same inputs and seed give the same error on every try
DETERMINISTIC_ERRORS = (ConfigError, DataError, NonFiniteLossError, OutOfMemoryError)
_BY_NAME = {cls.__name__: cls for cls in DETERMINISTIC_ERRORS}


class TrialRecord:
    """``<run>/<trial folder>/attempts.jsonl`` and ``failure.json`` for one trial."""

    def __init__(self, run: str, trial_dir_name: str):
        self._storage = RunStorage.from_uri(f"{run.rstrip('/')}/{trial_dir_name}")

    def attempts(self) -> list[dict[str, Any]]:
        if not self._storage.exists(ATTEMPTS_FILE):
            return []
        return [json.loads(line) for line in self._storage.read_text(ATTEMPTS_FILE).splitlines() if line.strip()]

    def start(self, *, node_id: str, checkpoint: str | None, refused: str | None) -> int:
        """Append this attempt; return its number (1 for the first)."""
        done = self.attempts()
        entry = {"attempt": len(done) + 1, "pid": os.getpid(), "node_id": node_id, "checkpoint": checkpoint,
                 "refused": refused, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # read and rewrite, not append: a bucket cannot append, and only one attempt of a trial runs at a time
        self._storage.write_text(ATTEMPTS_FILE, "".join(json.dumps(a) + "\n" for a in [*done, entry]))
        return entry["attempt"]

    def record_failure(self, err: BaseException) -> None:
        entry: dict[str, Any] = {"type": type(err).__name__, "message": str(err)}
        if isinstance(err, NonFiniteLossError):
            entry.update(epoch=err.epoch, step=err.step, losses=err.losses)
        self._storage.write_text(FAILURE_FILE, json.dumps(entry))

    def recorded_failure(self) -> BaseException | None:
        """The recorded failure, rebuilt as the exception it was; None when there is none."""
        if not self._storage.exists(FAILURE_FILE):
            return None
        entry = json.loads(self._storage.read_text(FAILURE_FILE))
        cls = _BY_NAME.get(entry.get("type"), ConfigError)
        if cls is NonFiniteLossError:
            return NonFiniteLossError(entry["epoch"], entry["step"], entry["losses"])
        return cls(entry["message"])
