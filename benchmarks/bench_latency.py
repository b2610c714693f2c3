"""Is boxtune's latency figure one a user can believe? It against a plain timed loop and ONNX Runtime.

For each architecture and input size, an untrained model of that structure is exported with
``boxtune export`` (a ``.pt`` and an ``.onnx`` file, from a checkpoint this script writes), then
timed three ways, each in a fresh process with the same thread count, ``--rounds`` times:

- ``boxtune``: ``trainables.cost.measure_in_subprocess``, the figure trials get (median of
  ``--repeats`` calls after warm-up);
- ``plain loop``: the ``.pt`` export loaded with the README's three lines (torch and torchvision
  alone), ``--repeats`` calls of ``model([image])`` timed as a whole with ``time.perf_counter``,
  after the same warm-up; the mean per call;
- ``onnxruntime``: the ``.onnx`` export in an ``InferenceSession``, timed the same way.

The table gives each way's figure per round and the spread between rounds (max/min), and the
ratios of the plain loop and ONNX Runtime to boxtune's figure.

``--trained RUN`` asks whether the weights matter, and checks boxtune's timing of them: boxtune
times an untrained model of each structure before the trials, and each kept checkpoint after
them (``cost.trained``). For each trial of a sweep whose checkpoint is kept, its ``.pt`` export is
timed with the plain loop on boxtune's image (uniform noise) and on the run's val images
(cycled), beside the structure's untrained figure and boxtune's trained one (the ratios are to
the trained figure where the run has it, else to the untrained one), with the detections each
returns.
A detector's post-processing (score threshold, per-class NMS) costs more the more boxes pass the
threshold, and an untrained head passes nearly all of them.

    python benchmarks/bench_latency.py
    python benchmarks/bench_latency.py --models fasterrcnn_mobilenet_v3_large_320_fpn:320 retinanet_resnet50_fpn:512 --threads 2
    python benchmarks/bench_latency.py --trained RUN
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLASSES = 2

_PLAIN = """
import json, sys, time, torch, torchvision
torch.set_num_threads({threads})
ckpt = torch.load({pt!r}, weights_only=True)
model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
model.load_state_dict(ckpt["state_dict"]); model.eval()
image = torch.rand(3, {h}, {w}, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    for _ in range({warmup}):
        model([image])
    start = time.perf_counter()
    for _ in range({repeats}):
        model([image])
print(json.dumps((time.perf_counter() - start) / {repeats} * 1000))
"""

# a trained export: the same loop on boxtune's noise image and on real images, with the detections returned
_TRAINED = """
import json, sys, time, torch, torchvision
from torchvision.io import ImageReadMode, decode_image
torch.set_num_threads({threads})
ckpt = torch.load({pt!r}, weights_only=True)
model = torchvision.models.get_model(ckpt["architecture"], weights=None, weights_backbone=None, num_classes=ckpt["num_classes"], **ckpt["model_kwargs"])
model.load_state_dict(ckpt["state_dict"]); model.eval()
noise = [torch.rand(3, {h}, {w}, generator=torch.Generator().manual_seed(0))]
real = [decode_image(p, mode=ImageReadMode.RGB).float() / 255 for p in {images!r}]
out = {{}}
with torch.inference_mode():
    for name, images in (("noise", noise), ("val", real)):
        for i in range({warmup}):
            model([images[i % len(images)]])
        found = 0
        start = time.perf_counter()
        for i in range({repeats}):
            found += len(model([images[i % len(images)]])[0]["boxes"])
        out[name] = [(time.perf_counter() - start) / {repeats} * 1000, found / {repeats}]
print(json.dumps(out))
"""

_ORT = """
import json, time, numpy as np, onnxruntime as ort, torch
options = ort.SessionOptions(); options.intra_op_num_threads = {threads}; options.inter_op_num_threads = 1
session = ort.InferenceSession({onnx!r}, options, providers=["CPUExecutionProvider"])
feed = {{"image": torch.rand(3, {h}, {w}, generator=torch.Generator().manual_seed(0)).numpy()}}
for _ in range({warmup}):
    session.run(None, feed)
start = time.perf_counter()
for _ in range({repeats}):
    session.run(None, feed)
print(json.dumps((time.perf_counter() - start) / {repeats} * 1000))
"""


def _export(arch: str, size: int, folder: Path) -> tuple[Path, Path, dict]:
    """A checkpoint of an untrained model of this structure, exported as .pt and .onnx."""
    import torch

    from trainables.architectures import FAMILIES
    from trainables.checkpoint import TrialState, capture_rng, save_checkpoint
    from trainables.config import TrialConfig
    from trainables.model import build_model, model_kwargs
    from tune.ship.export import export_checkpoint

    sized = {} if FAMILIES[arch] == "ssd" else {"min_size": size, "max_size": size * 4 // 3 + 1}  # SSDlite: 320, fixed
    cfg = TrialConfig.model_validate({"model": {"architecture": arch, "weights": None, **sized}})
    names = [f"class{i}" for i in range(CLASSES)]
    torch.manual_seed(0)
    model = build_model(cfg.model, names)
    state = TrialState(epoch=1, model=model.state_dict(), optimizer={}, scheduler={}, scaler={}, rng=capture_rng(),
                       config=cfg.model_dump(mode="json"), metrics={"AP": 0.0}, architecture=arch,
                       classes=[{"label": i + 1, "name": n, "dataset_id": i + 1} for i, n in enumerate(names)],
                       model_kwargs=model_kwargs(cfg.model), history=[{"AP": 0.0}])
    ckpt = save_checkpoint(folder / "checkpoint", state).parent
    pt, onnx = folder / "model.pt", folder / "model.onnx"
    export_checkpoint(ckpt, pt, fmt="pt")
    export_checkpoint(ckpt, onnx, fmt="onnx")
    return pt, onnx, model_kwargs(cfg.model)


def _script(code: str, threads: int) -> float:
    return float(json.loads(_run_script(code, threads)))


def trained(run: str, *, threads: int, warmup: int, repeats: int, rounds: int) -> None:
    """Each kept trial's export against the untrained figure it was ranked by (see the module's docstring)."""
    from trainables.cost import input_hw
    from trainables.errors import BoxtuneError
    from tune.run import load_sweep, rank_trials
    from tune.ship.export import export_run

    view = load_sweep(run)
    costs = view.folder.costs() or {}  # structure key -> the untrained model's figures
    images = [r.path for r in view.manifest().records("val")]
    print(f"{run}: threads {threads}, {warmup} warm-up + {repeats} timed calls per figure, {rounds} rounds, "
          f"{len(images)} val images cycled; ms per image at batch 1 on CPU (median of rounds)")
    print(f"{'trial':<9} {'model':<44} {'untrained':>9} {'boxtune':>9} {'noise':>13} {'val images':>13} "
          f"{'detections (untrained, noise, val)':>36}")
    for row in rank_trials(view, intervals=False):
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            pt = Path(tmp) / "model.pt"
            try:
                export_run(run, pt, trial=row["trial"], fmt="pt")
            except BoxtuneError:  # its checkpoints were not kept
                continue
            arch, kwargs = _structure(pt)
            h, w = input_hw(arch, kwargs)
            code = _TRAINED.format(threads=threads, pt=str(pt), h=h, w=w, images=images, warmup=warmup, repeats=repeats)
            results = [json.loads(_run_script(code, threads)) for _ in range(rounds)]
        noise = statistics.median(r["noise"][0] for r in results)
        val = statistics.median(r["val"][0] for r in results)
        base = row.get("untrained_latency_ms", row["latency_ms"])  # the structure's untrained figure
        # boxtune's own figure of this trained checkpoint (cost.trained); the ratios are to it where it exists
        timed = row["latency_ms"] if row.get("latency_from") == "trained" else math.nan
        ref = base if math.isnan(timed) else timed
        untrained = costs.get(json.dumps({"architecture": arch, **kwargs}, sort_keys=True), {})
        model = f"{arch} {h}x{w}"
        print(f"{row['trial']:<9} {model:<44} {base:9.1f} {timed:9.1f} {noise:7.1f} {noise / ref:4.2f}x {val:7.1f} {val / ref:4.2f}x "
              f"{untrained.get('detections', float('nan')):>14.0f} {results[0]['noise'][1]:>8.0f} "
              f"{results[0]['val'][1]:>10.1f}")


def _structure(pt: Path) -> tuple[str, dict]:
    import torch

    ckpt = torch.load(pt, weights_only=True)
    return ckpt["architecture"], dict(ckpt["model_kwargs"])


def _run_script(code: str, threads: int) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout


def main() -> int:
    from trainables.cost import CostRequest, input_hw, measure_in_subprocess

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["fasterrcnn_mobilenet_v3_large_320_fpn:320",
                                                   "ssdlite320_mobilenet_v3_large:320"],
                   help="ARCH:MIN_SIZE each (max_size is min_size * 4/3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trained", metavar="RUN", help="time each kept trial's export of this sweep instead (see above)")
    args = p.parse_args()
    if args.trained:
        trained(args.trained, threads=args.threads, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
        return 0
    print(f"threads {args.threads}, {args.warmup} warm-up + {args.repeats} timed calls per figure, "
          f"{args.rounds} rounds; ms per image at batch 1 on CPU")
    print(f"{'model':<48} {'way':<12} {'rounds (ms)':<28} {'median':>8} {'spread':>7} {'/ boxtune':>9}")
    for spec in args.models:
        arch, _, size = spec.partition(":")
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            pt, onnx, kwargs = _export(arch, int(size), Path(tmp))
            h, w = input_hw(arch, kwargs)
            fill = dict(threads=args.threads, h=h, w=w, warmup=args.warmup, repeats=args.repeats, pt=str(pt),
                        onnx=str(onnx))
            ways: dict[str, list[float]] = {"boxtune": [], "plain loop": [], "onnxruntime": []}
            for _ in range(args.rounds):  # interleaved, so a change of machine load hits every way alike
                request = CostRequest(arch, CLASSES, kwargs, threads=args.threads, warmup=args.warmup,
                                      repeats=args.repeats, onnx=False)
                ways["boxtune"].append(measure_in_subprocess(request)["latency_ms"])
                ways["plain loop"].append(_script(_PLAIN.format(**fill), args.threads))
                ways["onnxruntime"].append(_script(_ORT.format(**fill), args.threads))
        base = statistics.median(ways["boxtune"])
        for way, values in ways.items():
            med = statistics.median(values)
            shown = " ".join(f"{v:.1f}" for v in values)
            print(f"{f'{arch} {h}x{w}':<48} {way:<12} {shown:<28} {med:8.1f} {max(values) / min(values):6.2f}x "
                  f"{med / base:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
