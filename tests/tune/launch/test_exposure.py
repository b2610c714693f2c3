"""A local sweep exposes nothing: every listening socket of its whole process tree is on loopback.

Ray decides where it listens when ``ray`` is first imported (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``).
The suite's conftest sets that switch for the test process itself, so these tests start the real
command line and the Python API in subprocesses whose environment never had it, and read the
listening TCP sockets of the subprocess and every descendant (GCS, raylet, workers, agents) from
``/proc`` while they run.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_sweep

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LISTEN = "0A"  # TCP state in /proc/net/tcp{,6}
_LOOPBACK = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("::ffff:127.0.0.1")}

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")


def _clean_env(tmp: Path) -> dict[str, str]:
    """The environment of a user's shell: no Ray switches, and a token of the test's own.

    A local ``ray.init`` turns token authentication on and writes ``~/.ray/auth_token`` when there
    is none; a token file here keeps the test off the real home folder.
    """
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PYTHONUNBUFFERED="1", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    assert SWITCH not in env and "RAY_ADDRESS" not in env
    return env


def _hex_address(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host byte order."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints each word little-endian
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return ipaddress.ip_address(socket.inet_ntop(family, words)), int(port, 16)


def _listening_by_inode() -> dict[int, tuple]:
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == _LISTEN:
                    out[int(cols[9])] = _hex_address(cols[1])
    return out


def _tree(root: int) -> dict[int, str]:
    """pid -> command of ``root`` and all its descendants alive now."""
    parents, names = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        names[int(entry.name)] = Path(cmdline[0].decode(errors="replace")).name if cmdline[0] else stat.split("(", 1)[1].rsplit(")", 1)[0]
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: names[pid] for pid in tree if pid in names}


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _watch_listeners(proc: subprocess.Popen, *, until=None, timeout_s: float) -> set[tuple[str, str, int]]:
    """(process, address, port) of every TCP listener seen in ``proc``'s tree until it exits (or ``until()``)."""
    seen = set()
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline and not (until and until()):
        listening = _listening_by_inode()
        for pid, name in _tree(proc.pid).items():
            for inode in _socket_inodes(pid) & listening.keys():
                address, port = listening[inode]
                seen.add((name, str(address), port))
        time.sleep(0.3)
    return seen


def _assert_loopback_only(seen: set[tuple[str, str, int]]) -> None:
    exposed = sorted(s for s in seen if ipaddress.ip_address(s[1]) not in _LOOPBACK)
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_proc_net_parsing_reads_a_known_listener():
    """The reader itself: a socket this test binds to 0.0.0.0 and one on 127.0.0.1 are found as such."""
    wide, narrow = socket.socket(), socket.socket()
    try:
        wide.bind(("0.0.0.0", 0))
        narrow.bind(("127.0.0.1", 0))
        wide.listen()
        narrow.listen()
        mine = {_listening_by_inode()[i] for i in _socket_inodes(os.getpid()) if i in _listening_by_inode()}
        assert (ipaddress.ip_address("0.0.0.0"), wide.getsockname()[1]) in mine
        assert (ipaddress.ip_address("127.0.0.1"), narrow.getsockname()[1]) in mine
    finally:
        wide.close()
        narrow.close()


def test_cli_sweep_listens_on_loopback_only(tiny_demo, tmp_path):
    """A real ``boxtune sweep`` without --address, from an environment without the switch."""
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(tiny_sweep(
        "exposure", tiny_demo, tmp_path / "runs", training={"epochs": 1, "seed": 0},
        search={"space": "quick", "num_trials": 1, "sampler": "random", "seed": 0})))
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tune.cli", "sweep", str(tmp_path / "sweep.yaml")],
                                stdout=out, stderr=subprocess.STDOUT, env=_clean_env(tmp_path), cwd=REPO)
        try:
            seen = _watch_listeners(proc, timeout_s=300)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0, log.read_text()[-4000:]
    names = {name for name, _, _ in seen}
    # the check can fail: Ray's control processes, a trial's worker and the driver were all seen listening
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sorted(seen)
    assert Path(sys.executable).name in names, sorted(seen)
    _assert_loopback_only(seen)


_API_SCRIPT = textwrap.dedent("""
    import os, sys
    import tune.workflow  # the Python API, as a notebook would import it: ray is not imported yet
    from tune.launch.ray_session import ray_session
    assert "ray" not in sys.modules
    with ray_session(num_cpus=1) as where:
        import ray
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker process, listening too
        print("switch during the session:", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), flush=True)
        print("ready", flush=True)
        sys.stdin.readline()
    print("switch after the session:", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), flush=True)
""")


def test_python_api_local_session_listens_on_loopback_only_and_restores_the_switch(tmp_path):
    log = tmp_path / "api.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _API_SCRIPT], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, env=_clean_env(tmp_path), cwd=REPO, text=True)
        try:
            seen = set()
            ready = lambda: "ready" in log.read_text()  # noqa: E731
            _watch_listeners(proc, until=ready, timeout_s=120)
            seen = _watch_listeners(proc, timeout_s=3)  # the worker of the task above is up by now
            proc.stdin.close()
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sorted(seen)
    _assert_loopback_only(seen)
    # set for the local Ray's start, then taken out again: a `ray start` run later from this process
    # (to join a cluster) must not inherit it
    assert "switch during the session: None" in text and "switch after the session: None" in text


def test_local_session_refused_when_ray_was_imported_without_the_switch(tmp_path):
    script = textwrap.dedent("""
        import ray  # imported first, as a notebook might: Ray has read the switch (unset) already
        from trainables.errors import ConfigError
        from tune.launch.ray_session import ray_session
        try:
            with ray_session(num_cpus=1):
                raise SystemExit("a local Ray started on every interface")
        except ConfigError as err:
            print(err)
        assert not ray.is_initialized()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_clean_env(tmp_path),
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("a local Ray would listen on every network interface: `ray` was imported before "
                                 "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set"), out.stdout
