"""Run one sweep with the arrival order of its results forced, for tests/tune/launch/test_order_independence.py.

``python delayed_sweep.py CONFIG WAITS`` starts a local Ray whose trial workers hold back their
first epoch's report, ``WAITS`` (JSON: creation number -> creation number), until the trial
named has sent its own and ``GAP`` seconds more, so that the test decides which trial reaches the
rung first however slowly trials start on a loaded machine; then it launches CONFIG's sweep as
``boxtune sweep`` does (``launch_sweep``: the trials, not the ranking after them). Nothing in
boxtune knows of the waits: they are installed in each Ray worker by Ray's
``worker_process_setup_hook``, from this file. A wait gives up after ``PATIENCE`` seconds, and the
test's check of the arrival order then fails.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

_WAITS = "BOXTUNE_TEST_REPORT_WAITS"
_MARKS = "BOXTUNE_TEST_REPORT_MARKS"
GAP = 2.0  # seconds between the awaited report and the waiting one: Tune's result timestamps are whole seconds
PATIENCE = 240.0


def install_waits() -> None:
    """In a Ray worker: make ``RayReporter.report`` of the first epoch mark that it is sent, and
    wait first for the mark of the trial it is told to follow."""
    from trainables.ray_reporter import RayReporter

    waits = {int(k): int(v) for k, v in json.loads(os.environ[_WAITS]).items()}
    marks = Path(os.environ[_MARKS])
    report = RayReporter.report

    def delayed(self, metrics, checkpoint_dir):
        # the trial folder: sweep_trainable_<trial id>_<creation number>_<params>_<time>
        found = re.match(r"sweep_trainable_[0-9a-f]+_(\d+)_", self.trial_dir.name)
        if found and int(metrics.get("epoch", 0)) == 1:
            number = int(found.group(1))
            if number in waits:
                deadline = time.monotonic() + PATIENCE
                while not (marks / str(waits[number])).exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(GAP)
            (marks / str(number)).touch()  # before the report: a trial paused at the rung never returns from it
        report(self, metrics, checkpoint_dir)

    RayReporter.report = delayed


def main(config: str, waits: str) -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ[_WAITS] = waits
    marks = Path(tempfile.mkdtemp(prefix="report-marks-", dir=Path(config).resolve().parent))
    os.environ[_MARKS] = str(marks)
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    import ray
    import yaml

    from tune.config import SweepConfig
    from tune.launch.sweep import launch_sweep

    cfg = SweepConfig.model_validate(yaml.safe_load(Path(config).read_text()))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "delayed_sweep.install_waits"})
    try:
        launch_sweep(cfg)  # the trials only: the ranking and test split after them are not compared
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
