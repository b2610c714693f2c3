"""Keeps two kinds of Ray worker output off the sweep's terminal: the abort at exit of a stopped
trial's worker, and the line a trial prints each time it is restored from a checkpoint.

After a scheduler stops a trial, its Ray worker sometimes aborts while exiting and prints about
50 lines (a C++ stack through ``pthread_exit``, ``take_gil`` and ``SystemExit_dealloc``, then
``*** SIGABRT received`` and Python's ``Fatal Python error: Aborted`` dump). The cause is Ray's
(docs/testing.md, "A stopped trial's worker can abort at exit"); the trial's results are already
reported and nothing fails. ``quiet_worker_exit()`` wraps the handler through which Ray forwards
worker output to the driver (``log_to_driver``): a worker's block is held from the stack trace's
first line to the dump's last one and dropped, with one line in its place, only when it holds that
whole signature; any other block, or one longer than ``_MAX_HELD`` lines, is printed as it was.

``Restored on <ip> from checkpoint: Checkpoint(...)`` comes from Ray's Trainable every time a trial
continues from a checkpoint: with ``scheduler.name: halving`` at every rung. boxtune records each
start of a trial and the checkpoint it came from in the trial's folder (``tune.launch.trial_record``),
so the line is dropped here.

This hooks ``ray._private.ray_logging.global_worker_stdstream_dispatcher``, a private name of Ray
2.x; where it is missing, nothing is filtered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["quiet_worker_exit", "ExitAbortFilter"]

log = logging.getLogger(__name__)

_HANDLER = "ray_print_logs"  # the name Ray's driver gives its printing handler
_SIGNATURE = ("pthread_exit", "take_gil", "SystemExit_dealloc", "SIGABRT received")
_MAX_HELD = 400  # lines: a block longer than this is not the one this filter knows
NOTE = ("a stopped trial's Ray worker aborted while exiting (Ray's, harmless: its results were already "
        "reported; see docs/testing.md)")


def _restored(line: str) -> bool:
    return line.startswith("Restored on ") and " from checkpoint: Checkpoint(" in line


def _starts(line: str) -> bool:
    return "logging.cc" in line and "Stack trace:" in line



class ExitAbortFilter:
    """Per worker (``pid``): hold a block from its stack trace to the dump's ``Extension modules:``
    line; pass it on unless it is the exit abort. ``emit(batch)`` takes Ray's log batches (dicts
    with ``pid`` and ``lines``) and calls ``forward`` with what is to be printed."""

    def __init__(self, forward: Callable[[dict[str, Any]], None], *, note: Callable[[str], None] | None = None):
        self._forward = forward
        self._note = note or (lambda line: log.warning(line))
        self._held: dict[Any, tuple[dict[str, Any], list[str]]] = {}
        self._lock = threading.Lock()

    def emit(self, batch: dict[str, Any]) -> None:
        with self._lock:
            key = (batch.get("ip"), batch.get("pid"), batch.get("is_err"))
            passing: list[str] = []
            for line in batch.get("lines", []):
                if key in self._held:
                    held = self._held[key][1]
                    held.append(line)
                    if line.startswith("Extension modules:"):
                        del self._held[key]
                        if all(any(mark in h for h in held) for mark in _SIGNATURE):
                            self._note(NOTE)
                        else:
                            passing.extend(held)
                    elif len(held) > _MAX_HELD:
                        del self._held[key]
                        passing.extend(held)
                elif _restored(line):
                    continue
                elif _starts(line):
                    self._flush(batch, passing)
                    passing = []
                    self._held[key] = (batch, [line])
                else:
                    passing.append(line)
            self._flush(batch, passing)

    def flush(self) -> None:
        """Print every block still held (the session ends)."""
        with self._lock:
            for batch, held in self._held.values():
                self._flush(batch, held)
            self._held.clear()

    def _flush(self, batch: dict[str, Any], lines: list[str]) -> None:
        if lines:
            self._forward({**batch, "lines": lines})


def quiet_worker_exit() -> ExitAbortFilter | None:
    """Put the filter in front of Ray's printing handler in this driver; the filter, or None where
    Ray forwards no worker output (``log_to_driver=False``) or its private hook is gone."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return None
    with dispatcher._lock:
        handlers = dict(dispatcher.handlers)
    printing = handlers.get(_HANDLER)
    if printing is None or isinstance(getattr(printing, "__self__", None), ExitAbortFilter):
        return None
    quiet = ExitAbortFilter(printing)
    dispatcher.remove_handler(_HANDLER)
    dispatcher.add_handler(_HANDLER, quiet.emit)
    return quiet
