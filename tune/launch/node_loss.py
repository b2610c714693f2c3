"""A trial's Ray node lost mid-sweep: noticed on the driver, told in one line, recorded in the run folder.

Ray learns of a lost node three ways, at different times (measured with a worker's raylet killed
by SIGKILL, ``tests/cluster_scenarios.py``'s ``node_loss``):

* the node's raylet stops accepting connections at once;
* the trial's actor call fails when its connection breaks (about 8 s later), with a
  ``RayActorError`` (``ActorUnavailableError``, or ``ActorDiedError`` once the death is known), and
  Tune retries the trial (``retries``, ``FailureConfig.max_failures``: ``on_trial_recover``) or
  ends it (``on_trial_error``), logging the traceback and printing a result box;
* the GCS marks the node dead when its health checks have failed for long enough (about 15 s
  after the kill), and every driver is sent the raylet's last log lines and state dump.

The retry itself starts only when a node has room for it: on a full cluster, when another trial
ends. So ``NodeWatch`` does not wait for Tune: from Tune's step loop (the live table's
``on_step_end``, every 2 s) it reads ``ray.nodes()`` and tries the raylet port of every node a
running trial last reported from (``node_id`` in each result, ``trainables.ray_reporter``); a node
that ``ray.nodes()`` calls dead, or whose raylet refuses the connection, is lost. (A port that does
not answer in time is left to the GCS: a busy network is not a lost node.) The table then prints
one line per trial on it and records each in the run folder (``node_losses.jsonl``, through
``RunFolder.record_node_loss``), where ``boxtune status`` reads it while the sweep runs.

A trial error is a lost node when it is a ``RayActorError`` (the trial's process went away, not
an exception its code raised, which is a ``RayTaskError``) and the trial's node is lost by the
test above; a ``RayActorError`` on a live node (a worker process that crashed or was killed for
memory) is not, and is reported as Ray reports it. For a lost node, Ray's own output (the
traceback, the result box, the dumps) goes to ``ray_output.log`` in the run folder instead of the
terminal (``tune.launch.worker_logs.divert_lost_node_output``).

``watching(folder)`` makes the watch for one fit (``tune.launch.sweep``); the live table finds it
through ``active()``, so the table itself stays picklable (it is saved in ``tuner.pkl``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tune.run.folder import RunFolder

__all__ = ["NodeWatch", "watching", "active", "short_id"]

log = logging.getLogger(__name__)

POLL_S = 2.0  # seconds between looks at the nodes, from Tune's step loop
_PROBE_TIMEOUT_S = 0.5  # a raylet that refuses at once is gone; one that is slow to answer is left to the GCS

_ACTIVE: NodeWatch | None = None


def active() -> NodeWatch | None:
    """The watch of the fit running in this driver, or None (no fit, or a table used on its own)."""
    return _ACTIVE


def short_id(node_id: str) -> str:
    """A node id as the table and ``boxtune status`` show it: its first 6 hex digits."""
    return node_id[:6]


class NodeWatch:
    """Which node each running trial last reported from, and which of those nodes are lost."""

    def __init__(self, folder: RunFolder | None = None):
        self.folder = folder
        self._lock = threading.Lock()
        self._trials: dict[str, tuple[str, str]] = {}  # trial id -> (node id, node IP) of its latest result
        self._dirs: dict[str, str] = {}  # trial id -> its folder, where its attempts are recorded
        self._lost: dict[str, float] = {}  # node id -> when this driver noticed
        self._nodes: dict[str, dict[str, Any]] = {}  # node id -> its ray.nodes() entry, as last read
        self._polled = 0.0
        self._new: list[str] = []  # found lost, not yet handed out by poll()
        self._started = False  # nodes dead before the first look are not this fit's losses
        self.diverting = False  # Ray's output engine block being printed now is about a lost node

    # -- what the table tells it ------------------------------------------------------------------
    def note(self, trial_id: str, node_id: str | None, node_ip: str | None) -> None:
        if node_id:
            with self._lock:
                self._trials[trial_id] = (node_id, node_ip or "")

    def started(self, trial_id: str, trial_dir_name: str | None) -> None:
        """A trial (or its retry) starts: until it reports, its node is the one its attempt record names."""
        with self._lock:
            self._trials.pop(trial_id, None)
            if trial_dir_name:
                self._dirs[trial_id] = trial_dir_name

    def forget(self, trial_id: str) -> None:
        with self._lock:
            self._trials.pop(trial_id, None)
            self._dirs.pop(trial_id, None)

    def node_of(self, trial_id: str) -> tuple[str, str] | None:
        """(node id, IP) of the trial's latest result; before its first, the node its latest attempt
        started on (``attempts.jsonl``, ``tune.launch.trial_record``); None when neither is known."""
        with self._lock:
            where, folder = self._trials.get(trial_id), self._dirs.get(trial_id)
        if where is not None or folder is None or self.folder is None:
            return where
        from tune.launch.trial_record import TrialRecord

        try:
            attempts = TrialRecord(self.folder.uri, folder).attempts()
        except (OSError, ValueError):  # not written yet, or being written
            return None
        node = attempts[-1].get("node_id") if attempts else None
        return (node, self.node_ip(node)) if node else None

    # -- liveness ---------------------------------------------------------------------------------
    def poll(self) -> list[str]:
        """Nodes found lost since the last poll; looks at most every ``POLL_S``."""
        now = time.monotonic()
        if now - self._polled >= POLL_S:
            self._polled = now
            self._look()
        with self._lock:
            found, self._new = self._new, []
        return found

    def is_lost(self, node_id: str) -> bool:
        """Whether ``node_id`` is lost, looking now (a trial error is being classified)."""
        if node_id not in self._lost:
            self._look(probe={node_id})
        return node_id in self._lost

    def trial_lost(self, trial_name: str) -> bool:
        """Whether the trial named ``trial_name`` (Tune's ``str(trial)``, ending in its id) ran on a lost node."""
        with self._lock:
            ids = [tid for tid in {*self._trials, *self._dirs} if trial_name == tid or trial_name.endswith(f"_{tid}")]
        return any(where is not None and self.is_lost(where[0]) for where in map(self.node_of, ids))

    def lost_nodes(self) -> set[str]:
        return set(self._lost)

    def node_ip(self, node_id: str) -> str:
        entry = self._nodes.get(node_id) or {}
        return str(entry.get("NodeManagerAddress") or "")

    def _look(self, probe: set[str] = frozenset()) -> None:
        """Read ``ray.nodes()``; try the raylet of each node a running trial reported from, and of ``probe``."""
        import ray

        try:
            nodes = {n["NodeID"]: n for n in ray.nodes()}
        except Exception as err:  # noqa: BLE001 - a GCS that does not answer now is asked again next time
            log.debug("ray.nodes() failed: %s", err)
            return
        with self._lock:
            watched = {node for node, _ in self._trials.values()} | set(probe)
        self._nodes.update(nodes)
        for node_id in list(self._nodes):
            if node_id in self._lost:
                continue
            seen = nodes.get(node_id)
            if seen is None or not seen.get("Alive") or (node_id in watched and _raylet_refuses(seen)):
                self._lost[node_id] = time.time()
                if self._started:
                    with self._lock:
                        self._new.append(node_id)
        self._started = True


def _raylet_refuses(node: dict[str, Any]) -> bool:
    """Whether the node's raylet port refuses a TCP connection: its raylet is gone."""
    host, port = node.get("NodeManagerAddress"), node.get("NodeManagerPort")
    if not host or not port:
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # a timeout, an unreachable route: not proof; the GCS decides
        return False


@contextlib.contextmanager
def watching(folder: RunFolder | None) -> Iterator[NodeWatch]:
    """A ``NodeWatch`` for one fit, and Ray's output about lost nodes diverted to ``folder``'s
    ``ray_output.log`` (``folder`` None: losses are told, and Ray's output is left where it was)."""
    from tune.launch.worker_logs import divert_lost_node_output

    global _ACTIVE
    watch = NodeWatch(folder)
    before, _ACTIVE = _ACTIVE, watch
    try:
        if folder is None:
            yield watch
            return
        with divert_lost_node_output(folder.ray_output_path(), watch):
            yield watch
    finally:
        _ACTIVE = before
        if folder is not None:
            with contextlib.suppress(OSError):
                folder.upload_ray_output()
