"""Starting or joining Ray for a sweep, and the resource preflight.

Local by default: an embedded Ray started for the sweep, listening on loopback only, and stopped
after it. ``--address auto``, ``--address ray://host:10001`` or ``RAY_ADDRESS`` join an existing
cluster instead (a cluster started with ``ray start`` uses token authentication: set
``RAY_AUTH_MODE=token`` in the environment of every client).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from trainables.errors import ConfigError

__all__ = ["ray_session", "require_resources", "cluster_nodes"]


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[str]:
    """Yield the address in use; shut Ray down afterwards only if this call started or joined it."""
    import ray

    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _join(address)
        where = address
    else:
        # Every port of an embedded Ray then listens on 127.0.0.1: a local sweep exposes nothing.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        where = "local"
    try:
        yield where
    finally:
        ray.shutdown()


def _join(address: str) -> None:
    """Connect to a running cluster; a refusal (wrong address, no token) is a user error, not a bug."""
    import ray

    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as err:
        raise ConfigError(
            f"--address {address}: cannot connect to a Ray cluster there ({err}). Check the address "
            f"(`ray status` on the head node shows it); a cluster started with `ray start` uses token "
            f"authentication: set RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token "
            f"or RAY_AUTH_TOKEN."
        ) from err


def cluster_nodes() -> list[dict[str, float]]:
    """Alive nodes' total resources (CPU, GPU, memory), one dict per node."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def require_resources(*, cpu: float, gpu: float) -> None:
    """Fail now, with a clear message, if no node can ever run one trial (instead of pending forever).

    Set ``BOXTUNE_SKIP_PREFLIGHT=1`` for an autoscaling cluster whose GPU nodes start on demand.
    """
    if os.environ.get("BOXTUNE_SKIP_PREFLIGHT") == "1":
        return
    nodes = cluster_nodes()
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    shown = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "none"
    if gpu > 0 and not any(n.get("GPU", 0) >= gpu for n in nodes):
        raise ConfigError(
            f"resources.gpu: each trial asks for {gpu:g} GPU, but no node of the Ray cluster has that many "
            f"(nodes: {shown}). Set resources.gpu: 0 to train on CPU, or add GPU nodes "
            f"(autoscaling clusters: BOXTUNE_SKIP_PREFLIGHT=1)."
        )
    raise ConfigError(
        f"resources.cpu: each trial asks for {cpu:g} CPU{'s' if cpu != 1 else ''}"
        f"{f' and {gpu:g} GPU' if gpu else ''}, but no single node has that (nodes: {shown}). "
        f"Lower resources.cpu or add larger nodes."
    )
