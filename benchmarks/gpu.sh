#!/usr/bin/env bash
# Every GPU figure of a sweep in one run of about 4 minutes (5 at most): see benchmarks/bench_gpu.py.
#
#   bash benchmarks/gpu.sh                       # from the repo root, on the GPU machine
#   bash benchmarks/gpu.sh --parts packing,data  # rerun chosen parts; the others' rows are kept
#   bash benchmarks/gpu.sh --device cpu --tiny   # the CPU smoke test (tests/benchmarks/test_gpu_script.py)
#
# Writes gpu_results.json to $OUT if set, else to the current folder (or --out DIR), and prints
# one table with the targets judged. Beside it, gpu_memory.json: the packing preflight's measured
# memory table (part 5); copy it to trainables/gpu_memory.json and commit it.
#
# The machine it is written for is offline, with Python 3.12, torch 2.11 and torchvision 0.26,
# pyarrow, tensorboard, pyyaml, numpy and pillow preinstalled, and neither Ray nor Optuna: the
# trials run as `boxtune train` processes (`python -m tune.cli train`), which import neither. What
# boxtune's trial needs beyond those, as wheels for CPython 3.12 manylinux x86_64 (3.2 MiB):
#
#   pydantic==2.14.4           needs annotated-types>=0.6.0, pydantic-core==2.50.5,
#                              typing-extensions>=4.16.0, typing-inspection>=0.4.4
#   pydantic_core==2.50.5      needs typing-extensions>=4.16.0
#   annotated_types==0.8.0
#   typing_inspection==0.4.5   needs typing-extensions>=4.15.0
#   typing_extensions==4.16.0  (the preinstalled one may be older than pydantic-core needs)
#   pycocotools==2.0.11        needs numpy (preinstalled)
#
# Fetch them once, where pip reaches the package index, into .whl/ (ignored by git):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 \
#     typing_extensions==4.16.0 pycocotools==2.0.11
#
# On the GPU machine this script installs them when pydantic or pycocotools cannot be imported:
#
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
#
# and bench_gpu.py checks the whole list at start and names what is still missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import pydantic, pycocotools" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing the carried wheels into /tmp/site: $(ls .whl | tr '\n' ' ')"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    echo "pydantic or pycocotools is missing and there is no .whl/ folder: see this script's header" >&2
  fi
fi
exec "$PYTHON" benchmarks/bench_gpu.py "$@"
