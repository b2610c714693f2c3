"""A stopped trial's worker aborting at exit (Ray's) reaches the terminal as one line; other output as it was; Tune's slow-operation lines stay off it.

The block below is a real one, from a boxtune trial worker's log (Ray 2.60, 2026-12-02), shortened
in its middle; the filter is fed through Ray's own dispatcher, as Ray's log thread feeds it.
"""

from __future__ import annotations

from tune.launch.worker_logs import NOTE, ExitAbortFilter

ABORT = """[2026-12-02 09:30:17,825 E 24874 24945] logging.cc:125: Stack trace:
 /venv/lib/python3.11/site-packages/ray/_raylet.so(+0x1812b9a) [0x7f3169c12b9a] ray::operator<<()
/venv/lib/python3.11/site-packages/ray/_raylet.so(+0x1815c08) [0x7f3169c15c08] ray::TerminateHandler()
/lib/x86_64-linux-gnu/libgcc_s.so.1(_Unwind_ForcedUnwind+0x130) [0x7f31683f71b0] _Unwind_ForcedUnwind
/lib/x86_64-linux-gnu/libc.so.6(pthread_exit+0x36) [0x7f316aaa8316] pthread_exit
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x24f969) [0x7f316ae4f969] take_gil
/venv/lib/python3.11/site-packages/torch/lib/libtorch_python.so(+0x8a3381) [0x7f2f194a3381] THPVariable_dealloc()
/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0(+0x16a1e5) [0x7f316ad6a1e5] SystemExit_dealloc

*** SIGABRT received at time=1796203817 on cpu 0 ***
PC: @     0x7f316aaa8eec  (unknown)  (unknown)
Fatal Python error: Aborted

Stack (most recent call first):
  File "/venv/lib/python3.11/site-packages/ray/air/_internal/util.py", line 109 in run
Extension modules: msgpack._cmsgpack, google._upb._message, psutil._psutil_linux (total: 3)""".splitlines()


def _filter():
    printed, notes = [], []
    return ExitAbortFilter(lambda batch: printed.append((batch["pid"], list(batch["lines"]))), note=notes.append), \
        printed, notes


def test_the_exit_abort_is_one_note_and_the_lines_around_it_are_printed():
    quiet, printed, notes = _filter()
    quiet.emit({"ip": "127.0.0.1", "pid": 7, "is_err": True, "lines": ["epoch 2 done", *ABORT[:6]]})
    quiet.emit({"ip": "127.0.0.1", "pid": 8, "is_err": True, "lines": ["another worker's line"]})
    quiet.emit({"ip": "127.0.0.1", "pid": 7, "is_err": True, "lines": [*ABORT[6:], "after"]})
    assert printed == [(7, ["epoch 2 done"]), (8, ["another worker's line"]), (7, ["after"])]
    assert notes == [NOTE]


def test_the_restore_notice_of_a_trial_is_dropped():
    quiet, printed, notes = _filter()
    restored = ("Restored on 127.0.0.1 from checkpoint: Checkpoint(filesystem=local, path=/runs/demo/"
                "sweep_trainable_5111ff17_1_batch_size=4/checkpoint_000001)")
    quiet.emit({"ip": "127.0.0.1", "pid": 7, "is_err": False, "lines": [restored, "epoch 3"]})
    assert printed == [(7, ["epoch 3"])] and notes == []


def test_a_crash_without_the_signature_is_printed_whole():
    crash = [line for line in ABORT if "SystemExit_dealloc" not in line]  # e.g. a segfault mid-training
    quiet, printed, notes = _filter()
    quiet.emit({"ip": "127.0.0.1", "pid": 7, "is_err": True, "lines": crash})
    assert printed == [(7, crash)] and notes == []


def test_a_block_that_never_ends_is_printed_when_the_session_ends():
    quiet, printed, notes = _filter()
    quiet.emit({"ip": "127.0.0.1", "pid": 7, "is_err": True, "lines": ABORT[:4]})
    assert printed == []
    quiet.flush()
    assert printed == [(7, ABORT[:4])] and notes == []


def test_through_rays_dispatcher():
    from ray._private.ray_logging import WorkerStandardStreamDispatcher

    dispatcher = WorkerStandardStreamDispatcher()
    seen = []
    quiet = ExitAbortFilter(lambda batch: seen.extend(batch["lines"]), note=seen.append)
    dispatcher.add_handler("ray_print_logs", quiet.emit)
    dispatcher.emit({"ip": "127.0.0.1", "pid": 3, "is_err": True, "lines": ["loss 0.5", *ABORT]})
    assert seen == ["loss 0.5", NOTE]


def test_tunes_slow_operation_lines_stay_off_the_terminal_during_a_sweep(caplog):
    """Ray Tune's own warning (``ray.tune.utils.util.warn_if_slow``), raised by a real slow block:
    dropped inside the sweep's Tune environment, and left alone outside it."""
    import time

    import ray.tune.utils.util as tune_util
    from ray.tune.utils.util import warn_if_slow

    from tune.launch.sweep import _tune_environment

    def slow_block():
        with warn_if_slow("scheduler.on_trial_result", threshold=0.01):
            time.sleep(0.05)

    started = tune_util.START_OF_TIME
    tune_util.START_OF_TIME = time.time() - 120  # Tune stays quiet in a process's first minute
    try:
        with caplog.at_level("WARNING", logger="ray.tune.utils.util"):
            with _tune_environment():
                slow_block()
            assert not [r for r in caplog.records if "performance bottleneck" in r.getMessage()]
            slow_block()
            messages = [r.getMessage() for r in caplog.records]
            assert len(messages) == 1 and messages[0].startswith("The `scheduler.on_trial_result` operation took ")
    finally:
        tune_util.START_OF_TIME = started


# --- a lost node's output (tune.launch.node_loss) ------------------------------------------------

LOST_NODE = "b54aa1be185f6774156711d9c7cc155e8ef30a4fe16973b448f42293"
RAYLET_DIED = ("Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL by the user "
               "or system OOM killer, (2) Invalid memory access from Raylet causing SIGSEGV or SIGBUS, (3) Other "
               "termination signals. Last 20 lines of the Raylet logs:\n    [state-dump] DebugString() time ms: 2")


class _Watch:
    """What the diversion asks ``tune.launch.node_loss.NodeWatch``: here, trial ``lost0001`` ran on LOST_NODE."""

    diverting = False

    def trial_lost(self, trial_name: str) -> bool:
        return trial_name.endswith("_lost0001")

    def lost_nodes(self) -> set[str]:
        return {LOST_NODE}


def test_lines_naming_a_lost_node_go_to_the_log():
    quiet, printed, notes = _filter()
    diverted = []
    quiet.divert(lambda line: LOST_NODE in line, diverted.append)
    bundle = f"gcs_placement_group_scheduler.cc:273: Failed to remove 1 bundle(s) at node {LOST_NODE}"
    quiet.emit({"ip": "127.0.0.1", "pid": "gcs_server", "is_err": True, "lines": ["a line", bundle]})
    quiet.divert(None)
    quiet.emit({"ip": "127.0.0.1", "pid": "gcs_server", "is_err": True, "lines": [bundle]})
    assert printed == [("gcs_server", ["a line"]), ("gcs_server", [bundle])]
    assert diverted == [f"(gcs_server) {bundle}"]


def test_a_lost_nodes_ray_output_goes_to_the_log_and_every_other_error_to_the_terminal(tmp_path, capsys, caplog):
    """Tune's logger, Ray's output engine and the GCS's error messages, each called as Ray calls it."""
    import logging

    import ray._private.worker as ray_worker
    import ray.tune.experimental.output as engine
    from ray.exceptions import ActorUnavailableError, RayTaskError

    from tune.launch.worker_logs import divert_lost_node_output

    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    unavailable = ActorUnavailableError("The actor 4090ef2f is unavailable: RpcError: Socket closed", None)
    raised = RayTaskError("train", "Traceback (most recent call last):\nValueError: lr", ValueError("lr"))
    watch, log = _Watch(), tmp_path / "ray_output.log"
    original = ray_worker.print_to_stdstream
    with divert_lost_node_output(str(log), watch):
        tune_log.error("Trial task failed for trial sweep_trainable_lost0001", exc_info=unavailable)
        tune_log.error("Trial task failed for trial sweep_trainable_live0002", exc_info=unavailable)  # a crash
        tune_log.error("Trial task failed for trial sweep_trainable_lost0001", exc_info=raised)  # its own code
        watch.diverting = True  # the table has just told the loss: the engine's block follows
        engine._print_dict_as_table({"AP": 0.5}, header="Trial sweep_trainable_lost0001 result")
        watch.diverting = False
        engine._print_dict_as_table({"AP": 0.25}, header="Trial sweep_trainable_live0002 result")
        ray_worker.print_to_stdstream({"lines": [RAYLET_DIED], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        ray_worker.print_to_stdstream({"lines": ["Task was killed due to low memory"], "pid": "raylet", "is_err": False},
                                      ignore_prefix=False)
    terminal = capsys.readouterr()
    text = log.read_text()
    assert text.count("Trial task failed") == 1 and "sweep_trainable_lost0001" in text
    assert "ray.exceptions.ActorUnavailableError: The actor None is unavailable" in text  # with its exception
    assert "Trial sweep_trainable_lost0001 result" in text and "(raylet) Raylet is terminated" in text
    assert "[state-dump]" in text
    assert "sweep_trainable_live0002 result" in terminal.out and "Task was killed due to low memory" in terminal.out
    assert "lost0001" not in terminal.out and "Raylet is terminated" not in terminal.out
    # Tune's logger goes on to its handlers (the terminal) with the crash on a live node and the error
    # the trial's own code raised
    passed = [(r.getMessage(), type(r.exc_info[1]).__name__) for r in caplog.records]
    assert passed == [("Trial task failed for trial sweep_trainable_live0002", "ActorUnavailableError"),
                      ("Trial task failed for trial sweep_trainable_lost0001", "RayTaskError")]
    # all put back
    assert ray_worker.print_to_stdstream is original and "print" not in vars(engine)
    assert not tune_log.filters
