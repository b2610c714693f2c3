"""Is the sweep's ``storage`` one folder for every node? Checked before anything is written there.

A trial writes its results and checkpoints to ``storage`` on whichever node runs it, and the driver
reads them from its own node. A local path is therefore only right where every node sees the same
folder at that path (a shared file system mounted at the same place), or where the one node is the
driver's. Two ways to get it wrong pass Ray without a word, and both are refused here:

- **inside a Ray job**, a relative ``storage`` (``boxtune_runs``, the sample config's default) is
  resolved from the job's working directory, which is Ray's temporary copy of what ``ray job
  submit --working-dir`` uploaded (``.../runtime_resources/working_dir_files/_ray_pkg_.../``):
  the sweep would run and "succeed" into a folder Ray deletes. ``check_job_storage`` needs no Ray
  and runs before the dataset is read.
- **on several nodes without a shared file system**, each node writes to its own disk. After
  joining a cluster, ``check_shared_storage`` writes a marker file under ``storage`` and runs one
  zero-CPU task pinned to each alive node that can hold a trial (other than the driver's own): a
  node that does not see the marker is named in the refusal. The marker goes again at once.

A local sweep (its own one-node Ray) needs neither and runs neither. Buckets (``s3://``,
``gs://``, ...) are the same everywhere by construction and are not probed.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from tune.run import layout

__all__ = ["check_job_storage", "job_storage_problem", "check_shared_storage", "probe_targets", "unseen_storage_message",
           "JOB_CONFIG_ENV"]

# set by Ray's job supervisor in a job's entrypoint environment (ray.dashboard.modules.job.job_supervisor):
# the job's runtime_env (its working_dir among it) and metadata, as JSON
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# where Ray unpacks a runtime environment's files on a node: <session>/runtime_resources/working_dir_files/...
_RAY_RUNTIME_RESOURCES = "runtime_resources"
_USE_INSTEAD = ("use a shared file system mounted at the same path on every node (storage: /mnt/efs/boxtune_runs) "
                "or a bucket URI (storage: s3://my-bucket/boxtune_runs)")
_PROBE_TIMEOUT_S = 60.0  # a node's first task starts a worker process: seconds on a busy node, not minutes


def _is_uri(storage: str) -> bool:
    return "://" in storage and not storage.startswith("file://")


def _job_working_dir(environ: Mapping[str, str], cwd: str) -> str | None:
    """The working directory of the Ray job this process is the entrypoint of: its cwd when the job
    was submitted with a working_dir; None outside a job or for a job without one."""
    raw = environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    return cwd if isinstance(runtime_env, dict) and runtime_env.get("working_dir") else None


def job_storage_problem(storage: str, *, environ: Mapping[str, str], cwd: str) -> str | None:
    """Why ``storage`` (as the config resolved it: absolute, or a URI) is no place for a sweep's
    results in this process's Ray job, or None if it is: it lies in Ray's temporary files (the job's
    working-dir copy, or any runtime environment's ``runtime_resources``)."""
    if _is_uri(storage):
        return None
    path = Path(os.path.realpath(storage.removeprefix("file://")))
    working_dir = _job_working_dir(environ, cwd)
    if working_dir is not None and path.is_relative_to(os.path.realpath(working_dir)):
        where = f"inside the Ray job's working directory {working_dir}, Ray's temporary copy of what was submitted"
    elif _RAY_RUNTIME_RESOURCES in path.parts:
        where = "inside Ray's temporary runtime-environment files"
    else:
        return None
    return (f"storage: {path} is {where}, which Ray deletes (a relative storage in a job lands there); "
            f"{_USE_INSTEAD}")


def check_job_storage(storage: str) -> None:
    """ConfigError naming ``storage`` if it lies in the Ray job's temporary working directory (see above)."""
    problem = job_storage_problem(storage, environ=os.environ, cwd=os.getcwd())
    if problem is not None:
        raise ConfigError(problem)


def probe_targets(nodes: Sequence[Mapping[str, Any]], *, driver_node: str, cpu: float, gpu: float) -> list[str]:
    """The ids of the alive nodes (``ray.nodes()`` entries) that can hold a trial of ``cpu`` CPUs and
    ``gpu`` GPUs, the driver's own node left out: the nodes whose view of ``storage`` must be checked."""
    return [n["NodeID"] for n in nodes
            if n.get("Alive") and n["NodeID"] != driver_node
            and n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu]


def unseen_storage_message(storage: str, unseen: Sequence[tuple[str, str, str]]) -> str:
    """The refusal for the nodes ``(node id, address, why)`` that do not see what the driver wrote in ``storage``."""
    listed = ", ".join(f"{node_id} at {address}{f' ({why})' if why else ''}" for node_id, address, why in unseen)
    count = f"{len(unseen)} node{'s' if len(unseen) != 1 else ''}"
    return (f"storage: {storage} is not one folder shared by every node: a file written there on this node is not "
            f"there on {count} that can run trials: {listed}; {_USE_INSTEAD}")


def _sees(path: str) -> bool:
    return os.path.isfile(path)


def check_shared_storage(storage: str, *, cpu: float, gpu: float, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
    """In a connected Ray: ConfigError naming every node that can run trials and does not see ``storage``
    as this process does (see the module docstring). Nothing is left behind under ``storage``."""
    if _is_uri(storage):
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = ray.nodes()
    targets = probe_targets(nodes, driver_node=ray.get_runtime_context().get_node_id(), cpu=cpu, gpu=gpu)
    if not targets:
        return
    root = os.path.abspath(storage.removeprefix("file://"))
    created = _missing_parents(root)
    marker = os.path.join(root, f"{layout.STORAGE_PROBE_PREFIX}{secrets.token_hex(8)}")
    try:
        try:
            os.makedirs(root, exist_ok=True)
            Path(marker).write_text("boxtune: every node that runs trials must see this file\n")
        except OSError as err:
            raise ConfigError(f"storage: {root}: cannot write there ({err.strerror or type(err).__name__})") from None
        probe = ray.remote(num_cpus=0)(_sees)
        refs = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(marker)
                for node in targets}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        answers: dict[str, bool | None] = {}
        for node, ref in refs.items():
            try:
                answers[node] = ray.get(ref) if ref in ready else None
            except ray.exceptions.RayError:  # the node went away while we asked
                answers[node] = None
    finally:
        Path(marker).unlink(missing_ok=True)
        for folder in created:  # deepest first; only what this check made, and only if still empty
            try:
                os.rmdir(folder)
            except OSError:
                break
    address = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    unseen = [(node, address[node], "" if seen is False else f"no answer within {timeout_s:g} s")
              for node, seen in answers.items() if not seen]
    if unseen:
        raise ConfigError(unseen_storage_message(root, unseen))


def _missing_parents(path: str) -> list[str]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing
