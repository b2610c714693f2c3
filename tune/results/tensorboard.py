"""TensorBoard on a sweep folder: one HParams experiment for the whole sweep, and the server.

Every trial writes its own events (``trainables.tensorboard``): scalars, images, and an HParams
session with its hyperparameters. What the HParams dashboard still needs is the experiment: which
hyperparameters and metrics make its columns. TensorBoard's hparams plugin takes the first run
holding an experiment summary, and Ray Tune's own TensorBoard logger writes one into every
finished trial's folder, naming only that trial's hyperparameters and Ray's metrics. So
``write_hparams_experiment`` writes the sweep's experiment directly in the sweep folder
(TensorBoard's root run ``.``), and TensorBoard runs with its Python loader
(``--load_fast=false``), which registers runs in the order it walks the folder: root first. (The
Rust data server of ``--load_fast`` lists runs in an order that changes from start to start, and
then often shows one trial's experiment instead.)

The experiment lists every hyperparameter that appears in any trial's config (the union:
conditional ones too), strings and booleans with their values as discrete domains, and the
metrics ``best/score`` (the ranking key, ``trainables.objective``), ``best/AP``, ``best/AR100`` and
``coco/AP``, and with ``cost.measure`` each model's ``cost/latency_ms``, ``cost/params``, ... (and
where kept checkpoints were timed trained, ``cost/trained_latency_ms``, ...: ``write_trained_cost_scalars``).
TensorBoard reads an experiment once per
run, so hyperparameters of trials that start after TensorBoard did appear after a restart.
"""

from __future__ import annotations

import collections
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from trainables.cost import COST_COLUMNS, COST_TAG_PREFIX, TIMED_COLUMNS
from trainables.errors import BoxtuneError, ConfigError
from trainables.reporting import hparam_value
from tune.run.folder import TrainFolder
from tune.run.layout import HPARAMS_EVENTS_SUFFIX, TRAINED_COST_EVENTS_SUFFIX
from tune.run.view import SweepView, load_sweep

__all__ = ["EXPERIMENT_METRICS", "TRAINED_COST_METRICS", "experiment_hparams", "write_hparams_experiment",
           "write_trained_cost_scalars", "start_tensorboard", "serve"]

log = logging.getLogger(__name__)

EXPERIMENT_METRICS = ("best/score", "best/AP", "best/AR100", "coco/AP")
COST_METRICS = tuple(f"{COST_TAG_PREFIX}{key}" for key in COST_COLUMNS)  # the trials' own cost/ scalars (tune.launch.costs)
# a kept checkpoint's figures timed trained after the sweep (tune.results.trained_costs)
TRAINED_COST_METRICS = tuple(f"{COST_TAG_PREFIX}trained_{key}" for key in TIMED_COLUMNS)
_STARTUP_S = 60.0  # how long TensorBoard may take to answer its first request, s
_LOG_LINES = 40  # TensorBoard output lines kept for an error message


def experiment_hparams(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(name -> an example value, name -> discrete domain) over the union of ``configs``' keys.

    A name whose values are all numbers is numeric (no domain); all booleans, a boolean domain;
    anything else becomes strings with every value seen as the domain.
    """
    values: dict[str, list[Any]] = collections.defaultdict(list)
    for config in configs:
        for key, value in config.items():
            if value is not None:
                values[key].append(hparam_value(value))
    example: dict[str, Any] = {}
    domains: dict[str, list[Any]] = {}
    for key in sorted(values):
        seen = values[key]
        if all(isinstance(v, bool) for v in seen):
            example[key], domains[key] = seen[0], sorted(set(seen))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
            example[key] = seen[0]
        else:
            strings = sorted({str(v) for v in seen})
            example[key], domains[key] = strings[0], strings
    return example, domains


def _experiment_summary(configs: list[dict[str, Any]], metrics: tuple[str, ...] = EXPERIMENT_METRICS):
    from torch.utils.tensorboard.summary import hparams

    example, domains = experiment_hparams(configs)
    experiment, _, _ = hparams(example, dict.fromkeys(metrics, 0.0), hparam_domain_discrete=domains)
    return experiment


def write_hparams_experiment(view: SweepView) -> str | None:
    """Write (or replace) the sweep's HParams experiment event file in its folder; return its path.

    Returns None, writing nothing, while no trial has started.
    """
    configs = [t.config for t in view.trials if t.config]
    if not configs:
        return None
    # cost.measure: each trial's model figures (``cost/latency_ms``, ...) are columns too
    metrics = EXPERIMENT_METRICS + (COST_METRICS if view.folder.costs() else ()) + (
        TRAINED_COST_METRICS if view.trained_costs else ())
    storage = view.folder.storage
    target = _write_events(storage, storage.path, HPARAMS_EVENTS_SUFFIX,
                           lambda writer: writer.file_writer.add_summary(_experiment_summary(configs, metrics)))
    return f"{storage.uri}/{target.rsplit('/', 1)[-1]}"


def _write_events(storage, folder_path: str, suffix: str, write) -> str:
    """An events file written by ``write(writer)`` in a temporary folder, then put in ``folder_path``
    on ``storage``'s filesystem (local or URI), replacing the files there with the same ``suffix``."""
    from pyarrow import fs as pafs
    from torch.utils.tensorboard import SummaryWriter

    old = [info.path for info in storage.fs.get_file_info(pafs.FileSelector(folder_path, allow_not_found=True))
           if info.type == pafs.FileType.File and info.base_name.endswith(suffix)]
    with tempfile.TemporaryDirectory(prefix="boxtune-events-") as tmp:
        writer = SummaryWriter(log_dir=tmp, filename_suffix=suffix)
        write(writer)
        writer.close()
        (local,) = Path(tmp).glob(f"*{suffix}")
        target = f"{folder_path}/{local.name}"
        with storage.fs.open_output_stream(target) as sink:
            sink.write(local.read_bytes())
    for path in old:
        if path != target:
            storage.fs.delete_file(path)
    return target


def write_trained_cost_scalars(view: SweepView, trial_id: str, figures: dict[str, Any]) -> str | None:
    """A trial's trained timing as TensorBoard scalars ``cost/trained_latency_ms``, ... at step 0, in
    the trial's folder (replacing an earlier timing's file); None when no figure was measured."""
    measured = {key: float(figures[key]) for key in TIMED_COLUMNS if figures.get(key) is not None}
    if not measured:
        return None
    part = view.part_of(trial_id)  # a confirmation trial's folder is in the confirmation stage's
    folder = part.folder.trial_path(part.trial(trial_id).dir_name)

    def write(writer) -> None:
        for key, value in measured.items():
            writer.add_scalar(f"{COST_TAG_PREFIX}trained_{key}", value, 0)

    return _write_events(part.folder.storage, folder, TRAINED_COST_EVENTS_SUFFIX, write)


def _drain(stream, lines: collections.deque) -> None:
    for line in stream:
        lines.append(line.rstrip())


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "data/environment", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_tensorboard(run: str, *, host: str = "127.0.0.1", port: int = 6006,
                      timeout: float = _STARTUP_S) -> tuple[subprocess.Popen, str]:
    """Start TensorBoard on ``run`` bound to ``host``; return the process and its URL once it answers.

    The caller stops it (``terminate()`` then ``wait()``). A TensorBoard that exits or stays
    silent for ``timeout`` seconds is a BoxtuneError quoting its last output lines.
    """
    if "://" not in run and not Path(run).is_dir():
        raise BoxtuneError(f"{run}: no such folder")
    if not 0 < port < 65536:
        raise BoxtuneError(f"--port should be in 1..65535, got {port}")
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/"
    # --load_fast=false: the Python loader adds runs in the order it walks the folder, root first, so
    # the sweep's experiment wins over Ray's per-trial ones; the Rust data server's order varies.
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(run), "--host", host, "--port", str(port),
               "--load_fast=false"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, errors="replace")
    output: collections.deque = collections.deque(maxlen=_LOG_LINES)
    threading.Thread(target=_drain, args=(process.stdout, output), daemon=True).start()
    probe = url.replace(f"//{shown_host}:", "//127.0.0.1:") if host in ("0.0.0.0", "") else url
    deadline = time.monotonic() + timeout
    while not _answers(probe):
        if process.poll() is not None or time.monotonic() > deadline:
            alive = process.poll() is None
            if alive:
                process.terminate()
            process.wait(timeout=10)
            time.sleep(0.1)  # let the reader thread take the last lines
            why = f"did not answer within {timeout:.0f} s" if alive else f"exited with status {process.returncode}"
            tail = "\n  ".join(list(output)[-8:])
            raise BoxtuneError(f"TensorBoard on {url} {why}:\n  {tail}")
        time.sleep(0.2)
    return process, url


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(run: str, *, host: str = "127.0.0.1", port: int = 6006) -> int:
    """Write the experiment summary, start TensorBoard on ``run``, print its address, block until Ctrl-C."""
    if TrainFolder(run).is_train_run():
        pass  # a `boxtune train` folder: one run, its scalars and images; no HParams experiment to compare runs
    else:
        try:
            if write_hparams_experiment(load_sweep(run)) is None:
                log.warning("no trial has started yet: restart TensorBoard later to get the HParams columns")
        except ConfigError as err:  # a folder of events written otherwise: scalars and images still work
            log.warning("%s; serving without an HParams experiment", err)
    if not _port_free(host, port):
        raise BoxtuneError(f"port {port} on {host} is in use (another TensorBoard?); choose one with --port")
    # `kill PID` and a closed terminal stop TensorBoard too, as Ctrl-C does: by default they would
    # end this process at once and leave TensorBoard running, orphaned, on its port
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)} if main else {}
    process = None
    try:
        process, url = start_tensorboard(run, host=host, port=port)
        print(f"TensorBoard for {run} at {url} (Ctrl-C to stop)", flush=True)
        status = process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in previous:  # a second signal while TensorBoard stops must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        if process is not None:
            _stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status in (0, -signal.SIGINT, -signal.SIGTERM):  # Ctrl-C in a terminal reaches TensorBoard too
        return 0
    raise BoxtuneError(f"TensorBoard stopped (exit status {status})")
