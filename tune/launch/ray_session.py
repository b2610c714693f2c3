"""Starting or joining Ray for a sweep, and the resource preflight.

Local by default: an embedded Ray started for the sweep, listening on loopback only, and stopped
after it. ``--address HEAD_IP:6379`` (the head's GCS port), ``--address auto`` on a node of the
cluster, or ``RAY_ADDRESS`` join an existing cluster instead (a cluster started with ``ray start``
uses token authentication: set ``RAY_AUTH_MODE=token`` in the environment of every client, with the
cluster's token). Ray Client addresses (``ray://host:10001``) are refused: through them Tune runs
the whole sweep in an actor on the head, and its output comes back prefixed line by line.

Loopback only: Ray decides where its processes listen when ``ray`` is first imported, from
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (``0``: every port on 127.0.0.1; unset on Linux: every
interface). So a local session sets it before that import, and the command line sets it before it
imports anything for ``sweep``, ``demo`` and ``resume`` without an address. It stays out of joins:
``ray start --address`` aborts under it. If ``ray`` was imported without it, a local session is
refused rather than started on every interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from trainables.errors import ConfigError

__all__ = ["ray_session", "require_resources", "cluster_nodes", "confine_local_ray", "is_local", "check_address",
           "LOOPBACK_SWITCH"]

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray listens on 127.0.0.1 only


def is_local(address: str | None) -> bool:
    """Whether a session with this ``--address`` starts its own Ray (no address and no ``RAY_ADDRESS``)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def confine_local_ray() -> None:
    """For a process whose only Ray is a local one (the ``boxtune`` command): loopback, for good.

    Must run before ``ray`` is imported. The switch stays in this process's environment, so the
    local Ray's own processes (GCS, raylet, workers, agents) inherit it; nothing else is started.
    """
    os.environ[LOOPBACK_SWITCH] = "0"


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[str]:
    """Yield the address in use; shut Ray down afterwards only if this call started or joined it."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _join(address)
        where = address
    else:
        _start_local(num_cpus)
        where = "local"
    import ray

    from tune.launch.worker_logs import quiet_worker_exit

    quiet = quiet_worker_exit()  # a stopped trial's worker aborting at exit (Ray's) is one line, not 50
    try:
        yield where
    finally:
        if quiet is not None:
            quiet.flush()
        ray.shutdown()


def _token_default_notice(record: logging.LogRecord) -> bool:
    """False for Ray's notice (2.60) that a new local Ray turned token authentication on by default:
    a local sweep is on loopback and keeps the default, so every sweep would print it for nothing."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _start_local(num_cpus: int | None) -> None:
    """An embedded Ray on loopback only; the switch is set for the start and then restored.

    Its processes are started inside ``ray.init`` and keep the switch from then on, so the caller's
    environment (and whatever else it starts later: ``ray start`` for a cluster) goes back to how it was.
    """
    before = os.environ.get(LOOPBACK_SWITCH)
    os.environ[LOOPBACK_SWITCH] = "0"
    try:
        import ray

        if not _ray_confined():
            raise ConfigError(
                f"a local Ray would listen on every network interface: `ray` was imported before "
                f"{LOOPBACK_SWITCH}=0 was set, and Ray reads it only at that import. Set "
                f"{LOOPBACK_SWITCH}=0 in the environment before importing ray, or start Ray yourself "
                f"(ray.init) before the sweep, or pass an address to join a cluster."
            )
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        auth_log.addFilter(_token_default_notice)
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        finally:
            auth_log.removeFilter(_token_default_notice)
    finally:
        if before is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = before


_PROBE_TIMEOUT_S = 5.0  # for the probe below; Ray's own retries against a wrong address take minutes
# A Ray head's GCS port speaks gRPC: HTTP/2, which answers a client's connection preface with a
# SETTINGS frame (RFC 9113, sections 3.4 and 6.5). Anything else on that port is not a Ray cluster.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS
_H2_SETTINGS = 4  # frame type, the 4th byte of the 9-byte frame header


def _join(address: str) -> None:
    """Connect to a running cluster; a refusal (wrong address, not Ray, no token) is a user error, not a bug.

    What Ray prints while it connects (its C++ core writes to file descriptor 2 directly, and retries
    a refused join for half a minute, a line each time) goes to a log file instead of the terminal:
    a refusal is one line that names the file, and a join that succeeds deletes it.
    """
    check_address(address)
    import ray
    from ray.exceptions import AuthenticationError

    log = Path(tempfile.gettempdir()) / f"boxtune-join-{os.getpid()}.log"
    try:
        with _stderr_to(log):
            ray.init(address=address, log_to_driver=True)
    # what Ray 2.60 raises when a join is refused: ConnectionError (nothing answers as a GCS),
    # AuthenticationError (no token, or another cluster's token), ValueError (a malformed address),
    # RuntimeError and PermissionError (a version mismatch, an unreadable token file)
    except (ConnectionError, AuthenticationError, ValueError, RuntimeError, PermissionError, TimeoutError) as err:
        if ray.is_initialized():
            ray.shutdown()
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(
            f"--address {address}: cannot connect to a Ray cluster there ({type(err).__name__}: {reason}). "
            f"Check the address (`ray status` on the head node shows it); a cluster started with `ray start` "
            f"uses token authentication: set RAY_AUTH_MODE=token, with the cluster's token in "
            f"~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN. Ray's own messages: {log}"
        ) from None
    log.unlink(missing_ok=True)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 (Python's ``sys.stderr`` and C++ code alike) appends to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("ab") as out:
            os.dup2(out.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def check_address(address: str) -> None:
    """For ``host:port``: fail in seconds if nothing listens there, something that is not Ray does,
    or the cluster refuses this client's token (or its lack of one).

    Against any of them, ``ray.init`` retries for half a minute or more before it gives up, printing
    as it goes. ``auto`` is left to Ray; a ``ray://`` address is refused (see the module's docstring).
    """
    import socket

    if address.startswith("ray://"):
        # Through Ray Client, Tune runs the whole sweep (its loop, the searcher, boxtune's progress
        # table) in an actor on the head: every line comes back prefixed `(TunerInternal pid=...)`,
        # in Tune's legacy output, with its warnings and a TensorBoard hint for the head's own disk
        raise ConfigError(f"--address {address}: Ray Client (ray://) addresses are not supported: join the "
                          f"head's GCS port instead, --address HEAD_IP:6379 (or auto on a node of the cluster)")
    if "://" in address or address in ("auto", "local"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected host:port (the head's GCS port, 6379 by default), "
                          f"or auto on a node of the cluster")
    hint = "Check the host and port (`ray status` on the head node shows the address)."
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S) as conn:
            try:
                conn.sendall(_H2_PREFACE)
                reply = conn.recv(9)
            except OSError:
                reply = b""
    except OSError as err:
        raise ConfigError(f"--address {address}: nothing accepts connections there "
                          f"({err.strerror or type(err).__name__}). {hint}") from None
    if len(reply) < 4 or reply[3] != _H2_SETTINGS:
        raise ConfigError(f"--address {address}: something listens there, but not a Ray cluster's GCS "
                          f"(no gRPC answer within {_PROBE_TIMEOUT_S:g} s). {hint}")
    _check_token(address)


# Ray's token authentication (2.60): a client sends its token only under RAY_AUTH_MODE=token, read
# from the first of these that is set, as the gRPC metadata `authorization: Bearer TOKEN`
_AUTH_MODE, _TOKEN_VAR, _TOKEN_PATH_VAR = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
_DEFAULT_TOKEN = Path("~/.ray/auth_token")
_COPY_TOKEN = (f"copy the head's ~/.ray/auth_token to this machine's {_DEFAULT_TOKEN} "
               f"(or to a file named by {_TOKEN_PATH_VAR})")
# the first call Ray's own client makes to the GCS; its request is an empty message, so no Ray code is needed
_GET_CLUSTER_ID = "/ray.rpc.NodeInfoGcsService/GetClusterId"


def _find_token() -> tuple[str | None, str]:
    """The token Ray would read here, whatever RAY_AUTH_MODE says, and where from, in Ray's order:
    RAY_AUTH_TOKEN, else the first line of the file RAY_AUTH_TOKEN_PATH names (no fallback when it is
    set), else ~/.ray/auth_token. ``None`` where that source holds no token."""
    if os.environ.get(_TOKEN_VAR):
        return os.environ[_TOKEN_VAR].strip() or None, _TOKEN_VAR
    if os.environ.get(_TOKEN_PATH_VAR):
        path = Path(os.environ[_TOKEN_PATH_VAR]).expanduser()
        return _first_line(path) or None, f"{_TOKEN_PATH_VAR}={path}"
    path = _DEFAULT_TOKEN.expanduser()
    return _first_line(path) or None, str(path)


def _first_line(path: Path) -> str:
    try:
        with path.open(errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def _check_token(address: str) -> None:
    """Ask the GCS at ``address`` for its cluster id with the token Ray would send from this process:
    a refusal names its cause (no token sent, or another cluster's token) in seconds."""
    import grpc

    mode = os.environ.get(_AUTH_MODE)
    token, source = _find_token()
    sends = (mode or "").lower() == "token"
    if sends and token is None:
        raise ConfigError(f"--address {address}: {_AUTH_MODE}=token, but there is no token in {source} "
                          f"(missing, unreadable or empty): {_COPY_TOKEN}")
    metadata = [("authorization", f"Bearer {token}")] if sends else []
    # bytes in, bytes out: the request message is empty and the reply is not read
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            channel.unary_unary(_GET_CLUSTER_ID)(b"", metadata=metadata, timeout=_PROBE_TIMEOUT_S)
            return
        except grpc.RpcError as err:
            code = err.code()
    if code != grpc.StatusCode.UNAUTHENTICATED:
        return  # anything else is Ray's to report, as it connects
    if sends:
        raise ConfigError(f"--address {address}: the cluster refuses this client's token (from {source}): "
                          f"it is not the cluster's. To join it, {_COPY_TOKEN}")
    why = f"{_AUTH_MODE} is {mode!r}" if mode is not None else f"{_AUTH_MODE} is not set"
    fix = (f"Set {_AUTH_MODE}=token (Ray then sends the token in {source})" if token is not None
           else f"Set {_AUTH_MODE}=token and {_COPY_TOKEN}")
    raise ConfigError(f"--address {address}: the cluster uses token authentication, and this client sends "
                      f"no token ({why}; Ray sends one only with {_AUTH_MODE}=token). {fix}")


def _ray_confined() -> bool:
    """Whether the imported ``ray`` read the switch as 0, i.e. binds a local Ray to loopback.

    Ray keeps what it read in a private constant and offers no public way to ask; if the constant
    moves, this says no, and a local session is refused with the message above instead of exposed.
    """
    constants = sys.modules.get("ray._private.ray_constants")
    return constants is not None and getattr(constants, "ENABLE_RAY_CLUSTER", True) is False


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
