"""Train and eval throughput of every architecture boxtune builds, side by side, in one run.

Each architecture is built as a trial builds it (random weights, head pruned to K = 3 classes,
nothing frozen), then timed on the same random images: ``--iters`` training steps (forward,
backward, SGD step) and ``--iters`` evaluation batches (``model.eval()``, inference mode, the
model's own post-processing), after one untimed warm-up step of each. Faster R-CNN, RetinaNet
and FCOS resize to ``--size`` px (min_size = max_size); SSDlite always resizes to 320x320, which
its builder fixes. Figures are images per second of wall time (one process, ``--threads`` torch
threads) and images per CPU-second of the process (``time.process_time``, all its threads), which
other work on a shared machine disturbs far less than wall time.

    python benchmarks/bench_architectures.py                  # CPU, 2 threads, 128 px, batch 2
    python benchmarks/bench_architectures.py --device cuda --size 512 --batch 8 --iters 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = ["a", "b", "c"]


def _batch(size: int, batch: int, generator):
    import torch

    images = [torch.rand(3, size, size, generator=generator) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        corner = torch.rand(2, generator=generator) * size / 2
        extent = size / 8 + torch.rand(2, generator=generator) * size / 3  # boxes of 1/8 to ~1/2 the side, px
        targets.append({"boxes": torch.cat([corner, corner + extent]).unsqueeze(0),
                        "labels": torch.randint(1, len(CLASSES) + 1, (1,), generator=generator)})
    return images, targets


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(arch: str, args) -> dict:
    import torch

    from trainables.architectures import FAMILIES
    from trainables.config import ModelConfig
    from trainables.model import build_model

    sizes = {} if FAMILIES[arch] == "ssd" else {"min_size": args.size, "max_size": args.size}
    extra = {"box_batch_size_per_image": args.rois} if FAMILIES[arch] == "fasterrcnn" else {}
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(ModelConfig(architecture=arch, weights=None, **sizes, **extra), CLASSES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images, targets = _batch(args.size, args.batch, torch.Generator().manual_seed(1))
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]

    def train_step():
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    model.train()
    train_step()  # warm-up: allocator, first kernels
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.iters):
        train_step()
    _sync(device)
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    model.eval()
    with torch.inference_mode():
        model(images)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
            model(images)
        _sync(device)
    eval_s, eval_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    n = args.iters * args.batch
    return {"architecture": arch, "input_px": 320 if FAMILIES[arch] == "ssd" else args.size,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "train_img_s": round(n / train_s, 2), "eval_img_s": round(n / eval_s, 2),
            "train_img_cpu_s": round(n / train_cpu_s, 3), "eval_img_cpu_s": round(n / eval_cpu_s, 3)}


def main() -> None:
    from trainables.architectures import ARCHITECTURES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--size", type=int, default=128, help="px, min_size = max_size (not SSDlite: 320)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3, help="timed steps of each kind, after one warm-up")
    p.add_argument("--rois", type=int, default=128, help="Faster R-CNN box_batch_size_per_image")
    p.add_argument("--arch", action="append", choices=ARCHITECTURES, help="repeatable; default: all")
    p.add_argument("--smoke", action="store_true", help="one step of each, 64 px: runs in seconds")
    args = p.parse_args()
    if args.smoke:
        args.iters, args.size, args.batch = 1, 64, 2  # SSDlite trains on 2 or more images
    import torch

    torch.set_num_threads(args.threads)  # a benchmark process of its own: no trial to share threads with
    rows = [bench(arch, args) for arch in (args.arch or ARCHITECTURES)]
    print(f"{'architecture':40s} {'px':>4s} {'params M':>9s} {'train img/s':>12s} {'eval img/s':>11s} "
          f"{'train img/CPU-s':>16s} {'eval img/CPU-s':>15s}")
    for r in rows:
        print(f"{r['architecture']:40s} {r['input_px']:4d} {r['params_m']:9.2f} {r['train_img_s']:12.2f} "
              f"{r['eval_img_s']:11.2f} {r['train_img_cpu_s']:16.3f} {r['eval_img_cpu_s']:15.3f}", flush=True)
    print(json.dumps({"device": args.device, "threads": args.threads, "batch": args.batch, "iters": args.iters,
                      "rows": rows}))


if __name__ == "__main__":
    main()
