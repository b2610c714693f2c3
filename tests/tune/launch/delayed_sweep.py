"""Run one sweep with the arrival order of its results forced, for tests/tune/launch/test_order_independence.py.

``python delayed_sweep.py CONFIG DELAYS`` starts a local Ray whose trial workers sleep before
reporting each epoch, ``DELAYS`` (JSON: creation number -> seconds) for that trial, so that the
test decides which trial reaches a rung first; then it launches CONFIG's sweep as ``boxtune
sweep`` does (``launch_sweep``: the trials, not the ranking after them). Nothing in boxtune knows of the delays: they are installed in each Ray worker by Ray's
``worker_process_setup_hook``, from this file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

_DELAYS = "BOXTUNE_TEST_REPORT_DELAYS"


def install_delays() -> None:
    """In a Ray worker: make ``RayReporter.report`` sleep first, by the trial's creation number."""
    from trainables.ray_reporter import RayReporter

    delays = {int(k): float(v) for k, v in json.loads(os.environ[_DELAYS]).items()}
    report = RayReporter.report

    def delayed(self, metrics, checkpoint_dir):
        # the trial folder: sweep_trainable_<trial id>_<creation number>_<params>_<time>
        found = re.match(r"sweep_trainable_[0-9a-f]+_(\d+)_", self.trial_dir.name)
        time.sleep(delays.get(int(found.group(1)), 0.0) if found else 0.0)
        report(self, metrics, checkpoint_dir)

    RayReporter.report = delayed


def main(config: str, delays: str) -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ[_DELAYS] = delays
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    import ray
    import yaml

    from tune.config import SweepConfig
    from tune.launch.sweep import launch_sweep

    cfg = SweepConfig.model_validate(yaml.safe_load(Path(config).read_text()))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "delayed_sweep.install_delays"})
    try:
        launch_sweep(cfg)  # the trials only: the ranking and test split after them are not compared
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
