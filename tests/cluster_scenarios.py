"""Multi-node Ray scenarios on one machine, run as a script inside a private network namespace.

``tests/tune/launch/test_cluster.py`` and ``benchmarks/bench_scaling.py`` start this file through
``namespace_command`` (``unshare -rn``: a user and network namespace holding only a loopback
interface, plus a PID namespace where permitted, so nothing the scenario starts can outlive it).
Every Ray port therefore listens on 127.0.0.1 of a network nobody else can reach, and the nodes
share the machine's filesystem, which stands in for the shared storage (EFS, a bucket) of a real
cluster.

    python tests/cluster_scenarios.py SCENARIO WORKDIR

reads ``WORKDIR/sweep.yaml`` (and ``WORKDIR/params.json`` where a scenario takes parameters)
and writes what it saw to ``WORKDIR/scenario.json``. Scenarios:

``ray_start``   the hand-run recipe of ``docs/cluster.md`` ("Starting nodes by hand"), run as written:
                its token generation, a head with ``CPU: 0`` as in ``cluster.yaml``, so every trial
                runs on a worker, and its worker command twice (two 1-CPU workers, one with a fake
                GPU; the scenario appends those flags); preflight checks through ``ray_session``;
                clients refused (no token, another cluster's token, a missing token file, a
                ``ray://`` address), each timed; then the recipe's ``boxtune sweep --address``.
``node_loss``   a ``ray.cluster_utils.Cluster`` of two 1-CPU nodes and `boxtune sweep --address`
                as a client process, its terminal output kept; the second node is killed (all its
                processes, no graceful shutdown) once one of its trials has checkpointed, `boxtune
                status` runs once the driver has recorded the loss, and the sweep has to finish on
                the first node.
``scaling``     the same sweep on one 1-CPU node, then on two; wall time of each.
``job``         a head with two CPUs and its job server (dashboard) on 127.0.0.1:8265, token
                authentication on; sweeps submitted with ``ray job submit`` (``params.json``:
                ``submit``, the command as docs/cluster.md shows it, ``WORKING_DIR`` in place of
                the folder; ``jobs``, the folders to submit in turn); then a 1-CPU worker whose
                view of ``params.json``'s ``node_local`` folder is its own (a tmpfs mounted over it
                in the worker's mount namespace, as a second machine's local disk), and ``boxtune
                sweep --address`` with that folder as storage, as a client and as a job.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tune.config import SweepConfig

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["namespace_command", "NamespaceUnavailable", "run_scenario", "SCENARIOS", "FAKE_CARD_MIB"]

HEAD_PORT = 6379  # free by construction: the namespace has its own loopback
CLUSTER_DOC = REPO / "docs" / "cluster.md"
# the line above the fenced block of docs/cluster.md that the ray_start scenario runs
RECIPE_MARK = "<!-- the cluster tests run this block as written"
SECOND_NODE = "second_node"  # custom resource only the second node advertises
AUTH_TOKEN_FILE = "auth_token"  # the scenario's own cluster token, in its private temp dir
_NODE_WAIT_S = 60


class NamespaceUnavailable(RuntimeError):
    """``unshare -rn`` is not permitted here (user namespaces disabled, or no ``unshare``/``ip``)."""


def namespace_command() -> list[str]:
    """The ``unshare`` prefix for a private network namespace: with a PID namespace where permitted.

    In the PID namespace the scenario is process 1, so every Ray process it started dies with it
    even if it crashes; ``--kill-child`` ends the scenario when the caller kills ``unshare``.
    """
    if shutil.which("unshare") is None:
        raise NamespaceUnavailable("`unshare` (util-linux) is not installed")
    if shutil.which("ip") is None:
        raise NamespaceUnavailable("`ip` (iproute2) is not installed; it brings the namespace's loopback up")
    tried = []
    for flags in (["-rnpf", "--mount-proc", "--kill-child"], ["-rn"]):
        probe = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["unshare", *flags]
        tried.append(f"`unshare {' '.join(flags)} true` exited {probe.returncode}: {probe.stderr.strip()}")
    raise NamespaceUnavailable(
        "cannot create a private network namespace, so multi-node Ray cannot be confined to loopback: "
        + "; ".join(tried)
        + ". Enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
        "or kernel.apparmor_restrict_unprivileged_userns=0)."
    )


def run_scenario(name: str, work: Path, *, timeout_s: float) -> dict[str, Any]:
    """Run one scenario in a private namespace; return its ``scenario.json``. A failure carries the log."""
    if name not in SCENARIOS:
        raise ValueError(f"scenario should be one of {sorted(SCENARIOS)}, got {name!r}")
    log = work / f"{name}.log"
    cmd = [*namespace_command(), sys.executable, str(Path(__file__).resolve()), name, str(work)]
    # none of the caller's Ray settings: no address, no token of its own, and not the switch that
    # confines a local Ray to loopback (`ray start --address` aborts under it)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_")) and k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("w") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"scenario {name} ran past {timeout_s:.0f} s; log:\n{_tail(log)}") from None
    if proc.returncode != 0:
        raise AssertionError(f"scenario {name} exited {proc.returncode}; log:\n{_tail(log)}")
    return json.loads((work / "scenario.json").read_text())


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# --- inside the namespace ---------------------------------------------------------------------


def _loopback_up() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _ray_temp_dir() -> Path:
    """A private temp dir for the scenario's nodes, holding the cluster's own auth token.

    The token is generated here, as `ray get-auth-token --generate` would, but never written to
    ``~/.ray``: every node and client gets it through ``RAY_AUTH_TOKEN_PATH`` (see ``_node_env``),
    so the scenario runs the same on a fresh machine and leaves the user's token alone.
    """
    # short on purpose: Ray's Unix socket paths live under it and must stay below 107 bytes
    root = Path(tempfile.mkdtemp(prefix="bt-ray-", dir="/tmp"))
    (root / "ray").mkdir()
    token = root / AUTH_TOKEN_FILE
    token.touch(mode=0o600)
    token.write_text(secrets.token_hex(32))  # 256 bits, as Ray generates them
    return root


def _node_env(temp: Path) -> dict[str, str]:
    env = dict(os.environ)
    # multi-node joins refuse this switch; the namespace already confines every port to loopback
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.pop("RAY_AUTH_TOKEN", None)  # it would win over the file below
    env.update(RAY_TMPDIR=str(temp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(temp / AUTH_TOKEN_FILE),
               RAY_USAGE_STATS_ENABLED="0")
    return env


FAKE_CARD_MIB = 24564  # what the second node's stand-in `nvidia-smi` reports (an A10G's 24 GiB)
NOT_A_GPU_NODE_MIB = 99999  # what the GPU-less nodes' stand-ins report


def _fake_card_env(temp: Path, mib: int = FAKE_CARD_MIB) -> dict[str, str]:
    """The node environment with a stand-in `nvidia-smi` first on PATH that reports a card of ``mib``.

    It answers only the plain total query, as drivers without ``memory.reserved`` do, so the
    reader's fallback is what runs."""
    bin_dir = temp / f"fake-nvidia-{mib}"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=memory.total" ] && [ "$2" = "--format=csv,noheader,nounits" ] '
                      f'&& echo {mib} && exit 0\nexit 9\n')
    script.chmod(0o755)
    env = _node_env(temp)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _ray_start(args: list[str], temp: Path, *, node_dir: str = "ray", env: dict[str, str] | None = None) -> None:
    """`ray start` with its own temp dir ``temp/node_dir``: as on separate machines, a node's session
    folder (and what trials stage there) is not the head's, although all share this filesystem."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    (temp / node_dir).mkdir(exist_ok=True)
    cmd = [ray_cli, "start", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp / node_dir),
           "--disable-usage-stats", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env or _node_env(temp), timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


def _pids_under(temp: Path) -> list[int]:
    """Processes whose command line names our private temp dir: the nodes `ray start` left running."""
    mine = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(temp).encode() in cmdline:
            mine.append(int(entry.name))
    return mine


def _stop_nodes(temp: Path, *, grace_s: float = 10.0) -> None:
    """SIGTERM every process of our nodes, then SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_under(temp)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
            time.sleep(0.2)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _wait_for_nodes(count: int) -> list[dict[str, Any]]:
    import ray

    deadline = time.monotonic() + _NODE_WAIT_S
    while time.monotonic() < deadline:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) >= count:
            return alive
        time.sleep(0.5)
    raise RuntimeError(f"expected {count} alive Ray nodes within {_NODE_WAIT_S} s, saw {len(alive)}")


def _node_summary(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"node_id": n["NodeID"], "resources": dict(n["Resources"]),
             "head": "node:__internal_head__" in n["Resources"]} for n in nodes]


def _sweep_config(work: Path) -> SweepConfig:
    from tune.config import SweepConfig, load_config

    return load_config(work / "sweep.yaml", SweepConfig)


def _params(work: Path) -> dict[str, Any]:
    path = work / "params.json"
    return json.loads(path.read_text()) if path.exists() else {}


def hand_start_recipe(doc: Path = CLUSTER_DOC) -> list[list[str]]:
    """The commands of the block under ``RECIPE_MARK`` in ``doc``, one argv per line, comments dropped."""
    import shlex

    text = doc.read_text()
    if RECIPE_MARK not in text:
        raise RuntimeError(f"{doc}: no line starting {RECIPE_MARK!r}, above the hand-run recipe's block")
    block = text.split(RECIPE_MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [argv for argv in (shlex.split(line, comments=True) for line in block.splitlines()) if argv]


def _run_recipe(recipe: list[list[str]], temp: Path, env: dict[str, str], *, head: tuple[list[str], dict[str, str]],
                workers: list[tuple[str, list[str], dict[str, str]]], address: str,
                token_copies: list[Path]) -> list[str]:
    """Run the recipe's commands in order, with HEAD_IP and WORKER_IP on loopback: ``export`` sets a
    variable for the commands after it, the head's ``ray start`` gets ``head``'s extra flags and
    environment, the workers' runs once per entry of ``workers`` (node dir, extra flags, environment).
    The head's ``~/.ray/auth_token`` is then copied to ``token_copies`` (as the recipe says to copy
    it to the other machines). Returns the recipe's ``boxtune sweep`` as an argv to run; a command
    this cannot run is an error, so the recipe cannot drift from what the tests run."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    host = address.rsplit(":", 1)[0]
    exports: dict[str, str] = {}
    started, sweep = [], None
    for argv in recipe:
        argv = [a.replace("HEAD_IP", host).replace("WORKER_IP", host) for a in argv]
        line = " ".join(argv)
        if argv[0] == "export" and len(argv) == 2 and "=" in argv[1]:
            key, value = argv[1].split("=", 1)
            exports[key] = value
        elif argv[:2] == ["ray", "get-auth-token"]:
            out = subprocess.run([ray_cli, *argv[1:]], capture_output=True, text=True, env={**env, **exports},
                                 timeout=120)
            if out.returncode != 0:
                raise RuntimeError(f"{line} exited {out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        elif argv[:3] == ["ray", "start", "--head"]:
            flags, node_env = head
            _ray_start([*argv[2:], *flags], temp, env={**node_env, **exports})
            started.append("head")
        elif argv[:2] == ["ray", "start"] and "--address" in argv:
            for node_dir, flags, node_env in workers:
                _ray_start([*argv[2:], *flags], temp, node_dir=node_dir, env={**node_env, **exports})
                started.append(node_dir)
        elif argv[:2] == ["boxtune", "sweep"] and argv[2] == "sweep.yaml":
            sweep = argv
        else:
            raise RuntimeError(f"{CLUSTER_DOC}: the scenario cannot run this line of the hand-run recipe: {line}")
    if "head" not in started or len(started) != 1 + len(workers) or sweep is None:
        raise RuntimeError(f"{CLUSTER_DOC}: the hand-run recipe should start a head, then workers, then run "
                           f"boxtune sweep sweep.yaml; it started {started} and ran {sweep}")
    head_token = Path(env["HOME"]) / ".ray" / "auth_token"
    for copy in token_copies:
        shutil.copyfile(head_token, copy)
    return sweep


def _timed_client(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return {"rc": out.returncode, "output": (out.stdout + out.stderr)[-3000:], "seconds": time.monotonic() - started}


def scenario_ray_start(work: Path) -> dict[str, Any]:
    """docs/cluster.md's hand-run recipe: a CPU-less head and two workers; preflight cases against them;
    refused clients, timed; then the recipe's `boxtune sweep --address` as a client."""
    temp = _ray_temp_dir()
    # the recipe generates the cluster's token itself, in ~/.ray of a home of the scenario's own
    home = temp / "home"
    home.mkdir()
    (temp / AUTH_TOKEN_FILE).unlink()
    address = f"127.0.0.1:{HEAD_PORT}"
    # before ray is imported: it reads RAY_AUTH_MODE once, at import
    env = _node_env(temp)
    os.environ.clear()
    os.environ.update(env)
    os.environ.pop("BOXTUNE_SKIP_PREFLIGHT", None)
    import ray

    from trainables.errors import ConfigError
    from tune.launch.gpu_preflight import card_memory_mib, gpu_memory_preflight
    from tune.launch.ray_session import ray_session, require_resources

    def recipe_env(node_env: dict[str, str]) -> dict[str, str]:
        """A node's environment as the recipe finds it: no token mode yet, the token in ~/.ray."""
        return {**{k: v for k, v in node_env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")},
                "HOME": str(home)}

    try:
        recipe = hand_start_recipe()
        # the GPU-less nodes get stand-ins too (reporting another size): the card read must not ask them.
        # The second node has its own resources: a fake GPU (no CUDA device behind it) and a marker,
        # and an `nvidia-smi` on its PATH that tells the card memory query FAKE_CARD_MIB
        sweep_argv = _run_recipe(
            recipe, temp, recipe_env(env), address=address,
            head=(["--num-gpus", "0"], recipe_env(_fake_card_env(temp, NOT_A_GPU_NODE_MIB))),
            workers=[("ray-second", ["--num-cpus", "1", "--num-gpus", "1", "--resources", json.dumps({SECOND_NODE: 1})],
                      recipe_env(_fake_card_env(temp))),
                     ("ray-third", ["--num-cpus", "1", "--num-gpus", "0"],
                      recipe_env(_fake_card_env(temp, NOT_A_GPU_NODE_MIB)))],
            token_copies=[temp / AUTH_TOKEN_FILE])  # the clients' copy, named by RAY_AUTH_TOKEN_PATH
        sweep_cmd = [sys.executable, "-m", "tune.cli", "sweep", str(work / "sweep.yaml"), *sweep_argv[3:]]
        # clients refused: the head's token mode unset or off, another cluster's token, a token file
        # that is not there, and a Ray Client address
        other_token = temp / "other_auth_token"
        other_token.write_text(secrets.token_hex(32))
        no_mode = {k: v for k, v in _node_env(temp).items() if k != "RAY_AUTH_MODE"}
        refused = {
            "unset_mode": (sweep_cmd, no_mode),
            # and no token anywhere: none in its own (empty) home, no RAY_AUTH_TOKEN_PATH
            "tokenless": (sweep_cmd, {**{k: v for k, v in _node_env(temp).items() if k != "RAY_AUTH_TOKEN_PATH"},
                                      "RAY_AUTH_MODE": "disabled", "HOME": str(temp / "tokenless_home")}),
            "wrong_token": (sweep_cmd, {**_node_env(temp), "RAY_AUTH_TOKEN_PATH": str(other_token)}),
            "missing_token": (sweep_cmd, {**_node_env(temp), "RAY_AUTH_TOKEN_PATH": str(temp / "no_such_token")}),
            "ray_client": ([*sweep_cmd[:-1], "ray://127.0.0.1:10001"], _node_env(temp)),
        }
        (temp / "tokenless_home").mkdir()
        clients = {case: _timed_client([*argv, "--name", case], client_env) for case, (argv, client_env) in refused.items()}
        preflight = []
        with ray_session(address) as where:
            nodes = _node_summary(_wait_for_nodes(3))
            for cpu, gpu in _params(work).get("preflight", []):
                try:
                    require_resources(cpu=cpu, gpu=gpu)
                    preflight.append({"cpu": cpu, "gpu": gpu, "error": None})
                except ConfigError as err:
                    preflight.append({"cpu": cpu, "gpu": gpu, "error": str(err)})
            # one zero-resource task per GPU node (only the second has one) reads its cards
            card_memory = {str(gpu): card_memory_mib(gpu) for gpu in (1, 0.5)}
            # and the memory preflight compares the test's table and configs with that card
            memory_preflight = {}
            if "gpu_memory_table" in _params(work):
                for gpu in _params(work)["gpu_memory_shares"]:
                    lines: list[str] = []
                    try:
                        gpu_memory_preflight(_params(work)["gpu_memory_configs"], gpu=gpu, echo=lines.append,
                                             table=_params(work)["gpu_memory_table"])
                        memory_preflight[str(gpu)] = {"lines": lines, "error": None}
                    except ConfigError as err:
                        memory_preflight[str(gpu)] = {"lines": lines, "error": str(err)}
        assert not ray.is_initialized(), "ray_session should disconnect a client it connected"
        started = time.monotonic()
        sweep = subprocess.run(sweep_cmd, capture_output=True, text=True, env=_node_env(temp), cwd=REPO, timeout=600)
        sweep_s = time.monotonic() - started
        gpu_refused = None
        if "gpu_memory_table_none_fits" in _params(work):
            # the same sweep on the fake GPU, with a table by which no config fits the card: refused before any trial
            too_big = work / "gpu_memory_none_fits.json"
            too_big.write_text(json.dumps(_params(work)["gpu_memory_table_none_fits"]))
            gpu_refused = subprocess.run([*sweep_cmd, "--name", "gpu_refused", "--set", "resources.gpu=1"],
                                         capture_output=True, text=True, cwd=REPO, timeout=300,
                                         env={**_node_env(temp), "BOXTUNE_GPU_MEMORY_TABLE": str(too_big)})
        seen = {"address": where, "nodes": nodes, "preflight": preflight, "card_memory": card_memory,
                "memory_preflight": memory_preflight,
                "sweep_rc": sweep.returncode,
                "sweep_s": sweep_s, "sweep_output": (sweep.stdout + sweep.stderr)[-6000:],
                "gpu_refused_rc": gpu_refused and gpu_refused.returncode,
                "gpu_refused_output": gpu_refused and (gpu_refused.stdout + gpu_refused.stderr)[-3000:],
                "recipe": recipe, "sweep_cmd": sweep_cmd}
        for case, client in clients.items():
            seen.update({f"{case}_rc": client["rc"], f"{case}_output": client["output"],
                         f"{case}_s": client["seconds"]})
        return seen
    finally:
        _stop_nodes(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _cluster(temp: Path, *, nodes: int):
    """A `ray.cluster_utils.Cluster` of ``nodes`` 1-CPU nodes, the second and later marked SECOND_NODE."""
    from ray.cluster_utils import Cluster

    os.environ.update(RAY_TMPDIR=str(temp), RAY_USAGE_STATS_ENABLED="0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": str(temp / "ray"),
                                                            "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, resources={SECOND_NODE: 1}) for _ in range(nodes - 1)]
    cluster.wait_for_nodes()
    return cluster, workers


def _results(run: Path) -> dict[str, list[dict[str, Any]]]:
    """trial folder -> its result rows so far (result.json is appended one line per report)."""
    out = {}
    for path in run.glob("*/result.json"):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line being written right now
        out[path.parent.name] = rows
    return out


def _kill_after_checkpoint(cluster, node, run: Path, epochs: int, record: dict[str, Any], done: threading.Event) -> None:
    """Remove ``node`` (a hard kill of all its processes) once a trial on it has reported an epoch
    before its last: that trial has a checkpoint in storage and work left to do. Then, once the
    driver has recorded the loss in the run folder, run `boxtune status` on the run, as a user
    would while the trial waits for its retry."""
    while not done.is_set():
        for trial, rows in _results(run).items():
            if rows and rows[-1].get("node_id") == node.node_id and rows[-1].get("epoch", epochs) < epochs:
                record.update(trial=trial, epoch_at_kill=rows[-1]["epoch"], killed_at=time.time())
                cluster.remove_node(node, allow_graceful=False)
                record["removed_at"] = time.time()
                _status_after_loss(run, trial, record, done)
                return
        time.sleep(0.2)


def _status_after_loss(run: Path, trial: str, record: dict[str, Any], done: threading.Event) -> None:
    """`boxtune status RUN` as soon as ``node_losses.jsonl`` is there (or 10 s after the kill); whether
    the lost trial had reported an epoch again (from the other node) before status had read the run."""
    from tune.run.layout import NODE_LOSS_FILE

    # then status runs all the same (what does it say without the record?): still before the retry,
    # which waits for the other trial's epoch and then trains one of its own
    deadline = time.monotonic() + 10
    while not (run / NODE_LOSS_FILE).exists() and time.monotonic() < deadline and not done.is_set():
        time.sleep(0.2)
    if (run / NODE_LOSS_FILE).exists():
        record["loss_recorded_s"] = time.time() - record["removed_at"]
    status = subprocess.run([sys.executable, "-m", "tune.cli", "status", str(run)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    record.update(status_rc=status.returncode, status_output=status.stdout + status.stderr,
                  retried_before_status=len(_results(run).get(trial, [])) > record["epoch_at_kill"])


def scenario_node_loss(work: Path) -> dict[str, Any]:
    """Two 1-CPU nodes; the second is killed mid-trial; the sweep must still account for every trial.

    The sweep runs as `boxtune sweep --address` in a process of its own, so its terminal output
    (stdout and stderr, as a user sees them) is kept whole."""
    import pyarrow.parquet as pq

    cfg = _sweep_config(work)
    run = Path(cfg.storage) / cfg.name
    temp = _ray_temp_dir()
    cluster, (worker,) = _cluster(temp, nodes=2)
    kill: dict[str, Any] = {}
    done = threading.Event()
    killer = threading.Thread(target=_kill_after_checkpoint, args=(cluster, worker, run, cfg.training.epochs, kill, done),
                              daemon=True)
    try:
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        killer.start()
        started = time.monotonic()
        sweep = subprocess.run([sys.executable, "-m", "tune.cli", "sweep", str(work / "sweep.yaml"),
                                "--address", cluster.address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=REPO, timeout=360)
        sweep_s = time.monotonic() - started
        done.set()
        killer.join(timeout=150)
        rows = pq.read_table(run / "ranking.parquet").to_pylist() if (run / "ranking.parquet").exists() else []
        return {"head_node": head_id, "second_node": worker_id, "kill": kill, "sweep_s": sweep_s,
                "sweep_rc": sweep.returncode, "sweep_output": sweep.stdout,
                "ranking": [{k: r[k] for k in ("trial", "status", "epochs", "error")} for r in rows]}
    finally:
        done.set()
        killer.join(timeout=30)
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def scenario_scaling(work: Path) -> dict[str, Any]:
    """The same sweep on one 1-CPU node, then on two; seconds from submit to ranking for each."""
    import yaml

    from tune.config import SweepConfig
    from tune.workflow import run_sweep

    base = yaml.safe_load((work / "sweep.yaml").read_text())
    out = {}
    for nodes in (1, 2):
        cfg = SweepConfig.model_validate({**base, "name": f"{base.get('name', 'scaling')}_{nodes}node"})
        temp = _ray_temp_dir()
        cluster, _ = _cluster(temp, nodes=nodes)
        try:
            started = time.monotonic()
            rows = run_sweep(cfg, address=cluster.address, echo=lambda *_: None)
            seconds = time.monotonic() - started
        finally:
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
        out[f"{nodes}"] = {"seconds": seconds, "trials": len(rows),
                           "finished": sum(r["status"] == "TERMINATED" for r in rows)}
    return out


JOB_SERVER = "http://127.0.0.1:8265"  # the head's dashboard, where `ray job submit` sends a job


def _ray_start_own_disk(args: list[str], temp: Path, folder: Path, *, node_dir: str) -> None:
    """`ray start` in a mount namespace of its own where a fresh tmpfs covers ``folder``: the node and its
    workers see an empty folder there, whatever the other nodes write (a second machine's local disk)."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    (temp / node_dir).mkdir(exist_ok=True)
    cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs boxtune-node-local "$0" && exec "$@"', str(folder),
           ray_cli, "start", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp / node_dir),
           "--disable-usage-stats", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_job_node_env(temp), timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


def _job_node_env(temp: Path) -> dict[str, str]:
    """The node environment, with this checkout first on PYTHONPATH and the Python's scripts on PATH:
    a job's entrypoint (`boxtune ...`) inherits it from the head's raylet, and its trials likewise."""
    env = _node_env(temp)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    return env


def _submit(submit: list[str], working_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """One `ray job submit` (it waits for the job and streams its log); the job as the job server then reports it."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(JOB_SERVER)
    before = {job.submission_id for job in client.list_jobs()}
    argv = [str(working_dir) if arg == "WORKING_DIR" else arg for arg in submit]
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=working_dir.parent, timeout=600)
    seconds = time.monotonic() - started
    (job,) = [job for job in client.list_jobs() if job.submission_id not in before]
    return {"argv": argv, "submit_rc": out.returncode, "submit_output": (out.stdout + out.stderr)[-6000:],
            "seconds": seconds, "status": str(job.status.value), "entrypoint": job.entrypoint,
            "driver_exit_code": job.driver_exit_code, "logs": client.get_job_logs(job.submission_id)[-6000:]}


def scenario_job(work: Path) -> dict[str, Any]:
    """`ray job submit` against a head with its job server; then a node with its own disk at the storage path."""
    temp = _ray_temp_dir()
    address = f"127.0.0.1:{HEAD_PORT}"
    env = _job_node_env(temp)
    os.environ.clear()  # before ray is imported: it reads RAY_AUTH_MODE once, at import
    os.environ.update(env)
    params = _params(work)
    node_local = Path(params["node_local"])
    node_local.mkdir(parents=True, exist_ok=True)
    try:
        _ray_start(["--head", "--port", str(HEAD_PORT), "--num-cpus", "2", "--num-gpus", "0",
                    "--include-dashboard", "true", "--dashboard-host", "127.0.0.1"], temp, env=env)
        seen: dict[str, Any] = {"jobs": {name: _submit(params["submit"], work / name, env) for name in params["jobs"]}}
        # a second node whose storage folder is its own: what the head writes there, it does not see
        _ray_start_own_disk(["--address", address, "--num-cpus", "1", "--num-gpus", "0"], temp, node_local,
                            node_dir="ray-own-disk")
        import ray

        ray.init(address=address)
        try:
            nodes = _node_summary(_wait_for_nodes(2))
        finally:
            ray.shutdown()
        seen["nodes"] = nodes
        client_cmd = [sys.executable, "-m", "tune.cli", "sweep", str(work / params["jobs"][0] / "sweep.yaml"),
                      "--address", address, "--name", "node_local", "--set", f"storage={node_local}"]
        started = time.monotonic()
        client = subprocess.run(client_cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        seen["node_local_client"] = {"rc": client.returncode, "output": (client.stdout + client.stderr)[-6000:],
                                     "seconds": time.monotonic() - started}
        seen["node_local_job"] = _submit([*params["submit"], "--name", "node_local_job", "--set",
                                          f"storage={node_local}"], work / params["jobs"][0], env)
        seen["node_local_left"] = sorted(p.name for p in node_local.iterdir())
        # where a relative storage would have gone: the jobs' working-dir copies on the head
        seen["working_dir_copies"] = sorted(str(p.relative_to(temp)) for p in temp.glob(
            "ray/session_2*/runtime_resources/working_dir_files/*/*"))  # not again through session_latest
        return seen
    finally:
        _stop_nodes(temp)
        shutil.rmtree(temp, ignore_errors=True)


SCENARIOS = {"ray_start": scenario_ray_start, "node_loss": scenario_node_loss, "scaling": scenario_scaling,
             "job": scenario_job}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in SCENARIOS:
        print(f"usage: cluster_scenarios.py {{{','.join(SCENARIOS)}}} WORKDIR", file=sys.stderr)
        return 2
    name, work = argv[0], Path(argv[1])
    _loopback_up()
    result = SCENARIOS[name](work)
    (work / "scenario.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
