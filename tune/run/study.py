"""The search's Optuna study on disk: ``<run>/optuna.journal``, Optuna's journal file.

The searcher (``tune.launch.searcher``) keeps its study in ``optuna.storages.JournalStorage`` with a
``RunJournal`` as the journal's backend, so the study is a file of the run folder, which
``optuna-dashboard <run>/optuna.journal`` and ``optuna.load_study`` read while the sweep runs and
after it:

* a local run folder: the backend is Optuna's ``JournalFileBackend`` on the folder's own file,
  appended to as the search asks, reports and tells;
* a URI run folder (``s3://``, ``gs://``): an object store cannot append, so the journal is
  written to a local copy (``local_path``: under the temp folder, named by the run's URI) and
  copied to the run folder (``upload``) at each of Ray's experiment snapshots and when the trials
  end; ``boxtune resume`` copies it back before Ray restores the searcher (``download``).

Ray pickles the searcher, and the study inside it, into ``tuner.pkl`` and every
``searcher-state-*.pkl``. A ``RunJournal`` pickles as its run folder alone: unpickled, it opens the
journal again where this driver keeps it, so a restored searcher goes on in the file, never in a
copy of the study frozen at the snapshot.

Each Optuna trial carries two user attributes, set when the search asks for it:
``ray_trial_id`` (``RAY_TRIAL_ID``: Ray's trial id, the ranking's ``trial``) and
``creation_number`` (``CREATION_NUMBER``: 1 for the first trial the search created, the ranking's
``number``). A trial that a kill left behind, asked after Ray's last snapshot, is told FAIL on
resume with ``forgotten`` (``FORGOTTEN``) saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

from tune.run.layout import STUDY_FILE

if TYPE_CHECKING:
    from tune.run.storage import RunStorage

__all__ = ["RunJournal", "RAY_TRIAL_ID", "CREATION_NUMBER", "FORGOTTEN"]

RAY_TRIAL_ID = "ray_trial_id"  # Ray's trial id, as in the trial's folder name and the ranking's `trial`
CREATION_NUMBER = "creation_number"  # 1 for the first trial the search created (tune.run.view.creation_number)
FORGOTTEN = "forgotten"  # on a trial told FAIL on resume: why


class RunJournal(BaseJournalBackend):
    """The journal of the run folder ``storage``, for ``optuna.storages.JournalStorage`` (see the module docstring)."""

    def __init__(self, storage: RunStorage):
        self.storage = storage
        self._file: JournalFileBackend | None = None  # opened on first use, in this process

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.storage = state["storage"]
        self._file = None

    @property
    def local_path(self) -> str:
        """The file this driver appends to: the run folder's own, or a URI run's local copy."""
        if not self.storage.remote:
            return f"{self.storage.path}/{STUDY_FILE}"
        key = hashlib.sha256(self.storage.uri.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "boxtune-journals", key, STUDY_FILE)

    def _opened(self) -> JournalFileBackend:
        if self._file is None:
            os.makedirs(os.path.dirname(self.local_path), exist_ok=True)
            self._file = JournalFileBackend(self.local_path)
        return self._file

    # -- BaseJournalBackend ------------------------------------------------------------------------
    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._opened().read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._opened().append_logs(logs)

    # -- a URI run folder's local copy ----------------------------------------------------------------
    def upload(self) -> None:
        """Copy the local journal to a URI run folder (nothing to do for a local one: the file is the folder's)."""
        if self.storage.remote and os.path.isfile(self.local_path):
            self.storage.upload(self.local_path, STUDY_FILE)

    def download(self) -> None:
        """Make the local copy of a URI run folder's journal the folder's, before a resume restores
        the searcher; with none in the folder, start from none."""
        if not self.storage.remote:
            return
        self._file = None
        if self.storage.exists(STUDY_FILE):
            self.storage.download(STUDY_FILE, self.local_path)
        else:
            self.discard_local_copy()

    def discard_local_copy(self) -> None:
        """Remove a URI run folder's local copy (a new sweep must not find an earlier sweep's study
        under the same URI); a local run folder's journal is never removed."""
        if self.storage.remote:
            self._file = None
            for path in (self.local_path, f"{self.local_path}.lock"):
                if os.path.lexists(path):
                    os.remove(path)
            with contextlib.suppress(OSError):  # its folder, once empty
                os.rmdir(os.path.dirname(self.local_path))
