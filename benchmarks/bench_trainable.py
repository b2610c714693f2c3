"""Training throughput of boxtune's trainable against a minimal hand-written loop, side by side.

The minimal loop is what tutorials do: a Dataset that decodes with PIL, a DataLoader, the model,
an optimiser, ``sum(losses).backward()``. Both run the same model, data, batch size, threads and
(no) augmentation, each in its own process (so peak memory is per variant), alternating A/B/A/B so
machine noise falls on both. On CUDA the trainable runs with AMP (its default) and the minimal
loop in fp32, as tutorials do. The trainable's figure is its own per-epoch ``images_per_s`` (the
training loop only, as the minimal loop is timed); the evaluation share is ``eval_s / train_s``.

    python benchmarks/bench_trainable.py                      # demo data, CPU, 2 threads
    python benchmarks/bench_trainable.py --data ../shared/data/raccoon --size 320
    python benchmarks/bench_trainable.py --device cuda        # AMP on (bf16 where supported)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _model_cfg(args) -> dict:
    return {"architecture": args.arch, "weights": None, "min_size": args.size, "max_size": args.size,
            "box_batch_size_per_image": args.rois}


def _peak_memory(device) -> dict:
    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_trainable(args) -> dict:
    from trainables.data import read_manifest
    from trainables.loop import TrialResources, run_trial
    from trainables.reporting import LocalReporter

    manifest = read_manifest(args.manifest)
    cfg = {"model": _model_cfg(args), "training": {"epochs": args.epochs, "seed": 0, "num_workers": args.workers},
           "hparams": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": args.batch, "hflip_p": 0.0}}
    with tempfile.TemporaryDirectory() as out:
        reporter = LocalReporter(out)
        run_trial(cfg, manifest=manifest, reporter=reporter,
                  resources=TrialResources(cpus=args.threads, device=args.device))
        history = reporter.history()
    last = history[-1]  # the first epoch includes warm-up effects (allocator, first decode)
    return {"images_per_s": last["images_per_s"], "eval_share": last["eval_s"] / last["train_s"],
            "train_s": last["train_s"], "eval_s": last["eval_s"], **_peak_memory(args.device)}


def run_minimal(args) -> dict:
    import torch
    import torchvision
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms.functional import to_tensor

    from trainables.data import read_manifest

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records = read_manifest(args.manifest).records("train")

    class Minimal(Dataset):
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            r = records[i]
            image = to_tensor(Image.open(r.path).convert("RGB"))
            keep = ~r.iscrowd
            boxes = torch.as_tensor(r.boxes[keep], dtype=torch.float32)  # the manifest holds float64
            return image, {"boxes": boxes, "labels": torch.as_tensor(r.labels[keep])}

    device = torch.device(args.device)
    num_classes = int(max(max(r.labels, default=0) for r in records)) + 1
    model = torchvision.models.get_model(args.arch, weights=None, weights_backbone=None, num_classes=num_classes,
                                         min_size=args.size, max_size=args.size,
                                         box_batch_size_per_image=args.rois).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(Minimal(), batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        collate_fn=lambda b: tuple(zip(*b, strict=True)))
    rates = []
    model.train()
    for _ in range(args.epochs):
        start, n = time.perf_counter(), 0
        for images, targets in loader:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())  # fp32, as tutorials do
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - start))
    return {"images_per_s": rates[-1], **_peak_memory(args.device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="dataset path (default: generated demo data)")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--images", type=int, default=240, help="generated demo images (when --data is not given)")
    p.add_argument("--arch", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    p.add_argument("--rois", type=int, default=128, help="box_batch_size_per_image")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", choices=("trainable", "minimal"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--manifest", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        result = run_trainable(args) if args.worker == "trainable" else run_minimal(args)
        print("RESULT " + json.dumps(result))
        return

    from trainables.data import build_manifest, make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        source = args.data or make_demo_dataset(Path(tmp) / "demo", num_images=args.images, image_size=args.size, seed=0)
        manifest = Path(tmp) / "manifest.parquet"
        build_manifest(source, val_fraction=0.2, seed=0).write(manifest)
        passthrough = [a for a in sys.argv[1:] if not a.startswith("--data")]
        results: dict[str, list[dict]] = {"trainable": [], "minimal": []}
        for _ in range(args.rounds):
            for variant in ("minimal", "trainable"):
                cmd = [sys.executable, __file__, *passthrough, "--worker", variant, "--manifest", str(manifest)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
                line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
                results[variant].append(json.loads(line[7:]))
                print(variant, results[variant][-1], flush=True)
    tr = statistics.median(r["images_per_s"] for r in results["trainable"])
    mi = statistics.median(r["images_per_s"] for r in results["minimal"])
    print(json.dumps({
        "setup": vars(args) | {"data": str(args.data or "demo (generated)")},
        "trainable_images_per_s": round(tr, 2),
        "minimal_images_per_s": round(mi, 2),
        "ratio_trainable_over_minimal": round(tr / mi, 3),
        "eval_share_of_train_time": round(statistics.median(r["eval_share"] for r in results["trainable"]), 3),
        "peak_rss_mib": {k: round(max(r["peak_rss_mib"] for r in v)) for k, v in results.items()},
        **({"peak_cuda_mib": {k: round(max(r["peak_cuda_mib"] for r in v)) for k, v in results.items()}}
           if args.device.startswith("cuda") else {}),
    }, indent=2))


if __name__ == "__main__":
    main()
