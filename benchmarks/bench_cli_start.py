"""How long a command takes to answer a user error: the wall time of ``boxtune`` on a missing path.

Each command runs in a fresh interpreter (as a user runs it), ``--repeats`` times; the table gives
the median and the fastest. ``--repo`` times another checkout (an older commit unpacked with
``git archive COMMIT | tar -x -C DIR``) with this interpreter, for a before/after pair.

    python benchmarks/bench_cli_start.py
    python benchmarks/bench_cli_start.py --repo /tmp/boxtune_before --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# a user error each, and one import of torch and torchvision for scale
COMMANDS = {
    "data summary /nonexistent": ["-m", "tune.cli", "data", "summary", "{tmp}/nonexistent"],
    "export (no such folder)": ["-m", "tune.cli", "export", "{tmp}/runs/none", "--out", "{tmp}/best.pt"],
    "predict (no such file)": ["-m", "tune.cli", "predict", "{tmp}/best.pt", "{tmp}", "--out", "{tmp}/p.json"],
    "report (no such folder)": ["-m", "tune.cli", "report", "{tmp}/runs/none"],
    "import torch, torchvision": ["-c", "import torch, torchvision"],
}


def _time(argv: list[str], repo: Path, tmp: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *(a.format(tmp=tmp) for a in argv)], capture_output=True, env=env, cwd=tmp,
                   check=False, timeout=300)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout to time (default: this one)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"{args.repo} ({os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable), {args.repeats} runs each")
    print(f"{'command':<28} {'median s':>9} {'fastest s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in COMMANDS.items():
            times = [_time(argv, args.repo, tmp) for _ in range(args.repeats)]
            print(f"{name:<28} {statistics.median(times):>9.2f} {min(times):>10.2f}", flush=True)


if __name__ == "__main__":
    main()
