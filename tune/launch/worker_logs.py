"""Keeps Ray output off the sweep's terminal: the abort at exit of a stopped trial's worker, the
line a trial prints each time it is restored from a checkpoint, and Ray's output about a lost node
(to ``ray_output.log`` in the run folder).

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

A lost node (``tune.launch.node_loss``) makes Ray print about 110 lines between two rows of the
live table; boxtune tells the loss in one line of its own, and ``divert_lost_node_output(path,
watch)`` sends each part of Ray's to ``ray_output.log`` in the run folder instead:

* ``Trial task failed for trial ...`` and its traceback: Tune's logger
  (``ray.tune.execution.tune_controller``), for an error the watch calls a lost node;
* ``Trial ... errored after N iterations`` and the trial's result box: Ray's output engine
  (``ray.tune.experimental.output``), which prints them on every trial error and retry at any
  ``verbose``; diverted while the table has just told a loss (``watch.diverting``);
* ``(raylet) Raylet is terminated ...`` with the raylet's last log lines and ``[state-dump]``
  lines, and ``(raylet) The node ... has been marked dead``: error messages the GCS sends every
  driver (``ray._private.worker.listen_error_messages``);
* worker and GCS lines that name a lost node's id (``Failed to remove 1 bundle(s) ... at node``):
  the ``ExitAbortFilter`` above, in front of ``log_to_driver``.

Any other trial error is left to Ray, as before. This hooks
``ray._private.ray_logging.global_worker_stdstream_dispatcher``, ``ray._private.worker``'s
``print_to_stdstream`` and the ``print`` of ``ray.tune.experimental.output``, private names of Ray
2.x; where one is missing, that part is not filtered.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["quiet_worker_exit", "ExitAbortFilter", "RayOutputLog", "divert_lost_node_output"]

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
        self._diverted: Callable[[str], bool] | None = None  # a line about a lost node ...
        self._divert_to: Callable[[str], None] | None = None  # ... goes here, not to the terminal

    def divert(self, test: Callable[[str], bool] | None, to: Callable[[str], None] | None = None) -> None:
        """Send each line for which ``test`` is true to ``to`` instead of the terminal (None: stop)."""
        with self._lock:
            self._diverted, self._divert_to = test, to

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
                elif self._diverted is not None and self._diverted(line):
                    self._divert_to(f"({batch.get('pid')}) {line}")
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


def installed_filter() -> ExitAbortFilter | None:
    """The ``ExitAbortFilter`` that ``quiet_worker_exit`` put in front of Ray's printing handler, if any."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return None
    with dispatcher._lock:
        printing = dict(dispatcher.handlers).get(_HANDLER)
    quiet = getattr(printing, "__self__", None)
    return quiet if isinstance(quiet, ExitAbortFilter) else None


class RayOutputLog:
    """``ray_output.log``: Ray's output that the terminal is spared, appended with the time it came."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write("".join(f"[{stamp}] {line}\n" for line in text.rstrip("\n").splitlines() or [""]))


_TUNE_LOGGER = "ray.tune.execution.tune_controller"
_TRIAL_FAILED = "Trial task failed for trial "  # Tune's ERROR line, its traceback attached
_NODE_GONE = ("Raylet is terminated", "has been marked dead")  # the GCS's messages about a dead node


class _LostTrialErrors(logging.Filter):
    """On Tune's logger: a failed trial task whose node is lost goes to the file, with its traceback."""

    _format = logging.Formatter("%(levelname)s %(filename)s:%(lineno)s -- %(message)s")

    def __init__(self, out: RayOutputLog, watch: Any):  # watch: tune.launch.node_loss.NodeWatch (which imports this module)
        super().__init__()
        self._out, self._watch = out, watch

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_TRIAL_FAILED) or not _node_lost_error(record.exc_info):
            return True
        try:
            lost = self._watch.trial_lost(message.removeprefix(_TRIAL_FAILED).strip())
        except Exception:  # noqa: BLE001 - a filter must never lose Ray's record
            return True
        if lost:
            self._out.write(self._format.format(record))
        return not lost


def _node_lost_error(exc_info: Any) -> bool:
    """A ``RayActorError`` (the trial's process went away), not a ``RayTaskError`` (its code raised)."""
    from ray.exceptions import RayActorError, RayTaskError

    err = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    return isinstance(err, RayActorError) and not isinstance(err, RayTaskError)


@contextlib.contextmanager
def divert_lost_node_output(path: str, watch: Any) -> Iterator[RayOutputLog]:
    """While a fit runs: Ray's output about a node ``watch`` finds lost goes to ``path``, not the
    terminal (see the module docstring); everything is put back afterwards."""
    out = RayOutputLog(path)
    undo: list[Callable[[], None]] = []

    tune_log = logging.getLogger(_TUNE_LOGGER)
    errors = _LostTrialErrors(out, watch)
    tune_log.addFilter(errors)
    undo.append(lambda: tune_log.removeFilter(errors))

    with contextlib.suppress(ImportError):  # Ray's output engine: the error line and the result box
        import ray.tune.experimental.output as engine

        def engine_print(*args: Any, **kwargs: Any) -> None:
            if watch.diverting and kwargs.get("file") is None:
                text = io.StringIO()
                builtins.print(*args, **{**kwargs, "file": text})
                out.write(text.getvalue())
            else:
                builtins.print(*args, **kwargs)

        engine.print = engine_print
        undo.append(lambda: vars(engine).pop("print", None))

    with contextlib.suppress(ImportError):  # the GCS's error messages to every driver
        import ray._private.worker as ray_worker

        original = ray_worker.print_to_stdstream

        def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
            lines = data.get("lines") or []
            if data.get("pid") == "raylet" and any(mark in line for line in lines for mark in _NODE_GONE):
                out.write("\n".join(f"(raylet) {line}" for line in lines))
                return
            original(data, ignore_prefix)

        ray_worker.print_to_stdstream = print_to_stdstream
        undo.append(lambda: setattr(ray_worker, "print_to_stdstream", original))

    quiet = installed_filter()  # worker and GCS lines naming a lost node
    if quiet is not None:
        quiet.divert(lambda line: any(node in line for node in watch.lost_nodes()), out.write)
        undo.append(lambda: quiet.divert(None))
    try:
        yield out
    finally:
        for step in reversed(undo):
            step()
