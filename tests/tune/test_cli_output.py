"""What the command line prints: a closed pipe ends a command quietly, `boxtune train` ends in one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BOXTUNE = str(Path(sys.executable).with_name("boxtune"))


def _shell(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # PIPESTATUS[0]: boxtune's own exit status, not the reader's
    return subprocess.run(["bash", "-c", f"{command}; echo \"status=${{PIPESTATUS[0]}}\" >&2"],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_closed_pipe_exits_without_traceback(tiny_demo, reader):
    # `true` closes the pipe before boxtune has read the dataset, so every write fails with EPIPE;
    # `head -1` is the everyday case
    done = _shell(f"{BOXTUNE} data summary {tiny_demo} | {reader}")
    errors = [ln for ln in done.stderr.splitlines() if not ln.startswith("status=")]
    assert errors == []  # no traceback, no "Exception ignored ... BrokenPipeError"
    status = int(done.stderr.rsplit("status=", 1)[1])
    if reader == "true":
        assert status == 1 and done.stdout == ""
    else:
        assert status in (0, 1) and len(done.stdout.splitlines()) == 1
