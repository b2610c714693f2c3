"""Every GPU figure of a sweep in one short run: train and eval throughput, packing, the data path.

Run it through ``benchmarks/gpu.sh`` (which installs the carried wheels first; see its header).
Five parts, each in its own process under its own time limit, so one that fails or hangs costs
only its own rows; each part writes its rows as it goes, so a part cut off by its limit keeps
what it finished. They run in the order 5, 1, 2, 3, 4: the memory table is what the code needs
from a card.

1. ``train``: R50-FPN and MobileNetV3-320 training img/s and peak memory at batch 8, boxtune's
   trainable (``run_trial``) in fp32 and with its AMP, against a plain loop written in the style
   of torchvision's reference ``train_one_epoch`` (autocast + GradScaler: fp16, as plain AMP
   loops are) and that loop in fp32, on the same generated data. Then the knobs worth a
   measurement before they become config keys: bf16 in the plain loop, channels_last and
   ``cudnn.benchmark``.
2. ``eval``: a trial's evaluation (inference in fp32 plus COCO scoring) in img/s, and its share
   of an epoch (train + eval).
3. ``packing``: demo-sized trials, 1, 2 and 4 at a time on one GPU, each a ``boxtune train``
   process pinned to its share of the cores (``taskset``) and held to its share of the GPU's
   memory (``--gpu-memory-fraction``), as Ray's fractional GPUs would run them: trials per hour
   and peak memory per trial.
4. ``data``: the trial's own data path (dataset, decoded-image cache, transforms, loader
   workers, pinned copies to the device) with the model removed, in img/s, against the model's.
5. ``memory``: every architecture's peak GPU memory in training steps (the trial's own step, at
   freeze depth 0), at batch 2 and 8 at boxtune's default image size and at batch 8 on images
   twice as long each way, with AMP and in fp32, plus what the process holds outside its
   allocator (the CUDA context). ``gpu_memory.json`` beside ``gpu_results.json`` is the fit the
   packing preflight reads (``trainables.gpu_memory``): copy it to ``trainables/gpu_memory.json``.

What "fp32" means here: PyTorch's defaults, recorded in the JSON. cuDNN runs fp32 convolutions
in TF32 on Ampere and later (``torch.backends.cudnn.allow_tf32`` is True by default), while
matmuls stay in full fp32 (``torch.get_float32_matmul_precision() == "highest"``).

    bash benchmarks/gpu.sh                          # everything, on the GPU, in about 4 minutes
    bash benchmarks/gpu.sh --parts packing          # rerun one part (the others' rows are kept)
    bash benchmarks/gpu.sh --device cpu --tiny      # the smoke test the suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# memory first: its table is what the code needs from a card, so a run cut short keeps it
PARTS = ("memory", "train", "eval", "packing", "data")
# seconds per part on the GPU: 280 in all, which leaves the setup its share of the 5 minutes the run may take
TIME_LIMITS = {"train": 115, "eval": 30, "packing": 75, "data": 15, "memory": 45}
# what boxtune's trial needs beyond the GPU machine's preinstalled packages (carried as wheels,
# see gpu.sh), then what it takes from those preinstalled; name -> version carried (None: any)
CARRIED = {"pydantic": "2.14.4", "pydantic_core": "2.50.5", "annotated_types": "0.8.0",
           "typing_inspection": "0.4.5", "typing_extensions": "4.16.0", "pycocotools": "2.0.11"}
PREINSTALLED = {"torch": None, "torchvision": None, "numpy": None, "pillow": None, "pyarrow": None,
                "pyyaml": None, "tensorboard": None}
ARCHS = {"R50-FPN": "fasterrcnn_resnet50_fpn", "MobileNet-320": "fasterrcnn_mobilenet_v3_large_320_fpn"}


# --------------------------------------------------------------------------- sizes

def _sizes(args) -> dict:
    """Everything a part needs to know about the data and the models, as plain values."""
    if args.tiny:  # the CPU smoke test: every code path, seconds of compute
        return {"images": 12, "image_px": 64, "model_px": {"MobileNet-320": 64}, "batch": 2, "epochs": 1,
                "rois": 64, "demo_images": 12, "demo_px": 64, "demo_epochs": 1, "concurrency": [1, 2],
                "memory_archs": [ARCHS["MobileNet-320"]], "memory_size": [64, 96], "memory_steps": 1}
    from trainables.architectures import ARCHITECTURES
    from trainables.config import ModelConfig

    default = ModelConfig()  # the image size a sweep trains at unless model.min_size/max_size say otherwise
    # memory_steps 2: the model and optimiser carry over between an architecture's points, and the
    # first step's peak comes before its momentum buffers exist
    return {"images": 160, "image_px": 512, "model_px": {"R50-FPN": 512, "MobileNet-320": 320}, "batch": 8,
            "epochs": 2, "rois": 512, "demo_images": 240, "demo_px": 160, "demo_epochs": 2,
            "concurrency": [1, 2, 4], "memory_archs": list(ARCHITECTURES),
            "memory_size": [default.min_size, default.max_size], "memory_steps": 2}


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _hparams(batch: int) -> dict:
    # a low rate: random weights at batch 8 must not diverge within the timed epochs (the rate costs nothing)
    return {"optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "batch_size": batch, "hflip_p": 0.5}


# --------------------------------------------------------------------------- environment

def check_packages() -> dict:
    """Versions of what the trial needs; the missing ones named, with where they come from."""
    found, missing = {}, []
    for name, carried in {**CARRIED, **PREINSTALLED}.items():
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            missing.append(f"{name}" + (f"=={carried} (carried in .whl/)" if carried else " (preinstalled there)"))
    return {"versions": found, "missing": missing}


def _environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "device": device, "cpu_cores": len(_cores()),
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "fp32_means": "cuDNN convolutions in TF32 (allow_tf32=True, PyTorch's default), matmuls in full fp32"}
    if device.startswith("cuda") and shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["gpu"] = out.stdout.strip()
    return env


# --------------------------------------------------------------------------- setup (driver)

def setup(args, work: Path) -> dict:
    """Generate the data (no downloads exist there) and write the manifests the parts share."""
    from trainables.data import build_manifest, make_demo_dataset

    s = _sizes(args)
    t0 = time.perf_counter()
    bench = make_demo_dataset(work / "bench_data", num_images=s["images"], image_size=s["image_px"], seed=0)
    build_manifest(bench, val_fraction=0.2, seed=0).write(work / "bench.parquet")
    demo = make_demo_dataset(work / "demo_data", num_images=s["demo_images"], image_size=s["demo_px"], seed=0)
    build_manifest(demo, val_fraction=0.2, seed=0).write(work / "demo.parquet")
    return {"work": str(work), "bench_manifest": str(work / "bench.parquet"), "demo_data": str(demo),
            "seconds": time.perf_counter() - t0, **s}


# --------------------------------------------------------------------------- part helpers

class _Rows:
    """A part's rows, rewritten to its result file after each one (a part cut off keeps the rest)."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=1))
        print("ROW " + json.dumps(row), flush=True)


def _peak_mib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: the process's high-water mark


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _run_boxtune(setup_: dict, arch: str, *, amp: bool, device: str, cpus: int | None) -> dict:
    """One real trial (``run_trial``) on the bench data; the last epoch's figures (the first warms up)."""
    from trainables.loop import TrialResources, run_trial
    from trainables.reporting import LocalReporter

    px = setup_["model_px"][arch]
    cfg = {"model": {"architecture": ARCHS[arch], "weights": None, "min_size": px, "max_size": px,
                     "box_batch_size_per_image": setup_["rois"]},
           "training": {"epochs": setup_["epochs"], "seed": 0, "amp": amp, "num_workers": "auto"},
           "hparams": _hparams(setup_["batch"])}
    with tempfile.TemporaryDirectory(dir=setup_["work"]) as out:
        reporter = LocalReporter(out)
        run_trial(cfg, manifest=setup_["bench_manifest"], reporter=reporter,
                  resources=TrialResources(cpus=cpus, device=device))
        last = reporter.history()[-1]
    return last


def _amp_label(device) -> str:
    import torch

    if device.type != "cuda":
        return "amp off (CPU)"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


class _PlainDataset:
    """The reference's data path: PIL decode every read, then its "hflip" preset (v2 transforms)."""

    def __init__(self, records):
        import torch
        from torchvision.transforms import v2

        self.records = records
        self.preset = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        import torch
        from PIL import Image
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        r = self.records[i]
        with Image.open(r.path) as im:
            image = tv_tensors.Image(F.pil_to_tensor(im.convert("RGB")))
        keep = r.train_mask
        boxes = torch.as_tensor(r.boxes[keep], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(r.height, r.width)),
                  "labels": torch.as_tensor(r.labels[keep], dtype=torch.int64)}
        return self.preset(image, target)


def _collate_plain(batch):
    return tuple(zip(*batch, strict=True))


def _plain_loop(setup_: dict, arch: str, *, dtype: str, device, workers: int, channels_last: bool = False) -> dict:
    """A loop in the style of torchvision's references/detection ``train_one_epoch``.

    PIL decode and the reference's hflip preset in a Dataset, the DataLoader, ``get_model``, SGD,
    ``autocast`` with a ``GradScaler`` when the dtype is fp16, ``losses.item()`` every step.
    """
    import torch
    import torchvision
    from torch.utils.data import DataLoader

    from trainables.data import read_manifest

    manifest = read_manifest(setup_["bench_manifest"])
    torch.manual_seed(0)
    px = setup_["model_px"][arch]
    model = torchvision.models.get_model(ARCHS[arch], weights=None, weights_backbone=None,
                                         num_classes=len(manifest.class_names) + 1, min_size=px, max_size=px,
                                         box_batch_size_per_image=setup_["rois"]).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=1e-4)
    amp_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
    loader = DataLoader(_PlainDataset(manifest.records("train")), batch_size=setup_["batch"], shuffle=True,
                        num_workers=workers, collate_fn=_collate_plain)
    rate = 0.0
    for _ in range(setup_["epochs"]):  # the last epoch is timed; the first warms up
        model.train()
        start, n = time.perf_counter(), 0
        for images, targets in loader:
            images = [image.to(device) for image in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss_dict = model(images, targets)
                losses = sum(loss for loss in loss_dict.values())
            loss_value = losses.item()
            if loss_value != loss_value:
                raise RuntimeError(f"loss is {loss_value}, stopping training")
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(losses).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                losses.backward()
                optimizer.step()
            n += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = n / (time.perf_counter() - start)
    return {"images_per_s": rate}


# --------------------------------------------------------------------------- parts (workers)

def part_train(args, setup_: dict, rows: _Rows) -> None:
    import torch

    from trainables.loaders import _num_workers  # the trial's own sizing, for the plain loop too

    device = torch.device(args.device)
    cpus = None if device.type == "cuda" else min(2, len(_cores()))
    workers = _num_workers("auto", cpus, device)
    if device.type == "cpu":
        torch.set_num_threads(cpus)
    for arch in setup_["model_px"]:
        if args.tiny:  # every code path once: CPU autocast is bf16 (its fp16 kernels crawl), AMP is off in boxtune
            variants = [("boxtune", "fp32", {}), ("plain", "bf16", {"channels_last": True, "cudnn_benchmark": True})]
        else:
            variants = [("boxtune", "fp32", {}), ("boxtune", "amp", {}), ("plain", "fp32", {}), ("plain", "fp16", {})]
        if arch == "R50-FPN":  # the knobs, where they would matter most
            variants += [("plain", "bf16", {}), ("plain", "bf16", {"channels_last": True}),
                         ("plain", "bf16", {"cudnn_benchmark": True}), ("boxtune", "amp", {"cudnn_benchmark": True})]
        for loop, dtype, knobs in variants:
            _reset_peak(device)
            torch.backends.cudnn.benchmark = bool(knobs.get("cudnn_benchmark"))
            start = time.perf_counter()
            try:
                if loop == "boxtune":
                    last = _run_boxtune(setup_, arch, amp=dtype == "amp", device=args.device, cpus=cpus)
                    got = {"images_per_s": last["images_per_s"],
                           "peak_mib": last.get("gpu_mem_mib", _peak_mib(device)),
                           "reserved_mib": last.get("gpu_reserved_mib")}
                else:
                    got = _plain_loop(setup_, arch, dtype=dtype, device=device, workers=workers,
                                      channels_last=bool(knobs.get("channels_last")))
                    got["peak_mib"] = _peak_mib(device)
                error = None
            except Exception as exc:  # one variant failing (an OOM, an op without a kernel) keeps the others
                got, error = {}, f"{type(exc).__name__}: {exc}"[:500]
            finally:
                torch.backends.cudnn.benchmark = False
            label = _amp_label(device) if dtype == "amp" else dtype
            rows.add({"arch": arch, "loop": loop, "dtype": label, "knobs": sorted(k for k, v in knobs.items() if v),
                      "batch": setup_["batch"], "model_px": setup_["model_px"][arch], "workers": workers,
                      "seconds": time.perf_counter() - start, "error": error, **got})


def part_eval(args, setup_: dict, rows: _Rows) -> None:
    import torch

    device = torch.device(args.device)
    cpus = None if device.type == "cuda" else min(2, len(_cores()))
    for arch in setup_["model_px"]:
        last = _run_boxtune(setup_, arch, amp=True, device=args.device, cpus=cpus)
        from trainables.data import read_manifest

        n_val = len(read_manifest(setup_["bench_manifest"]).records("val"))
        rows.add({"arch": arch, "val_images": n_val, "eval_s": last["eval_s"], "train_s": last["train_s"],
                  "eval_images_per_s": n_val / last["eval_s"],
                  "eval_share_of_epoch": last["eval_s"] / (last["eval_s"] + last["train_s"]),
                  "train_images_per_s": last["images_per_s"]})


def _demo_trial(setup_: dict) -> dict:
    """The demo's trial (``tune.demo``'s model at its size) as a ``boxtune train`` config."""
    px = setup_["demo_px"]
    return {"data": {"path": str(Path(setup_["demo_data"])), "val_fraction": 0.2, "seed": 0},
            "model": {"architecture": ARCHS["MobileNet-320"], "weights": None, "min_size": px, "max_size": px,
                      "box_batch_size_per_image": 128},
            "training": {"epochs": setup_["demo_epochs"], "seed": 0, "num_workers": "auto"},
            "hparams": {**_hparams(4), "jitter_p": 0.5}}


def _trial_config(setup_: dict, out: Path) -> Path:
    import yaml

    path = out / "demo_trial.yaml"
    path.write_text(yaml.safe_dump(_demo_trial(setup_)))
    return path


def part_packing(args, setup_: dict, rows: _Rows) -> None:
    work = Path(tempfile.mkdtemp(dir=setup_["work"], prefix="packing-"))
    config = _trial_config(setup_, work)
    cores = _cores()
    taskset = shutil.which("taskset")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    base_rate = None
    for n in setup_["concurrency"]:
        share = max(1, len(cores) // n)
        procs = []
        start = time.perf_counter()
        for i in range(n):
            mine = [cores[(i * share + j) % len(cores)] for j in range(share)]
            out = work / f"n{n}_trial{i}"
            cmd = [sys.executable, "-m", "tune.cli", "train", str(config), "--out", str(out),
                   "--threads", str(share), "--device", args.device, "--gpu-memory-fraction", f"{1 / n:.4f}"]
            if taskset:
                cmd = [taskset, "-c", ",".join(map(str, mine))] + cmd
            log = open(work / f"n{n}_trial{i}.log", "w")  # closed once the trial is waited for
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work), out, log))
        trials = []
        for proc, out, log in procs:
            _, status, usage = os.wait4(proc.pid, 0)  # this trial's own peak RSS, not the sum of all
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.close()
            history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()] \
                if (out / "metrics.jsonl").is_file() else []
            trials.append({"rc": proc.returncode, "wall_s": time.perf_counter() - start,
                           "in_loop_s": sum(m["train_s"] + m["eval_s"] for m in history),
                           "peak_rss_mib": usage.ru_maxrss / 1024,
                           "gpu_mem_mib": history[-1].get("gpu_mem_mib") if history else None,
                           "gpu_reserved_mib": history[-1].get("gpu_reserved_mib") if history else None,
                           "AP": history[-1].get("AP") if history else None})
        wall = time.perf_counter() - start
        failed = [t["rc"] for t in trials if t["rc"] != 0]
        rate = n * 3600 / wall if not failed else 0.0
        base_rate = rate if n == 1 else base_rate
        rows.add({"concurrent": n, "cores_per_trial": share, "pinned": bool(taskset), "memory_fraction": round(1 / n, 4),
                  "wall_s": wall,
                  "trials_per_hour": rate, "vs_one_at_a_time": rate / base_rate if base_rate else None,
                  # trials per hour if process start (imports, CUDA context) were paid once, as Ray's reused workers do
                  "trials_per_hour_in_loop": n * 3600 / max(t["in_loop_s"] for t in trials) if not failed else 0.0,
                  "error": f"trial exit codes {failed}; logs in {work}" if failed else None, "trials": trials})


def part_data(args, setup_: dict, rows: _Rows) -> None:
    import torch

    from trainables.augment import build_train_transforms
    from trainables.config import HParams
    from trainables.data import DetectionDataset, read_manifest
    from trainables.data.cache import DecodedImageCache
    from trainables.loaders import _loader, _num_workers  # the trial's own loader settings

    device = torch.device(args.device)
    cpus = None if device.type == "cuda" else min(2, len(_cores()))
    workers = _num_workers("auto", cpus, device)
    records = read_manifest(setup_["bench_manifest"]).records("train")
    hp = HParams(**_hparams(setup_["batch"]))
    for cached in (False, True):
        cache = DecodedImageCache(1024 if cached else 0)
        fill = cache.fill(records, workers=workers)
        dataset = DetectionDataset(records, transforms=build_train_transforms(hp), cache=cache, seed=0)
        loader = _loader(dataset, batch_size=hp.batch_size, shuffle=True, workers=workers, seed=0, device=device)
        rate = 0.0
        for epoch in range(2):  # the second epoch is timed (the first starts the workers' imports)
            dataset.set_epoch(epoch)
            start, n = time.perf_counter(), 0
            for images, targets in loader:
                images = [im.to(device, non_blocking=True) for im in images]
                for t in targets:
                    t["boxes"].to(device, non_blocking=True), t["labels"].to(device, non_blocking=True)
                n += len(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rate = n / (time.perf_counter() - start)
        rows.add({"cached": cached, "workers": workers, "images_per_s": rate, "cache_fill_s": fill.seconds,
                  "cache_mib": fill.bytes / 2**20, "hit_rate": cache.hit_rate(records)})


def _synthetic_batches(batch: int, height: int, width: int, steps: int, device):
    """``steps`` batches of full-size noise images with three boxes each, made one at a time as a
    loader delivers them (only the current batch is on the device)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        images = [torch.rand(3, height, width, generator=g).to(device) for _ in range(batch)]
        boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.3, 0.2, 0.9, 0.8], [0.6, 0.5, 0.95, 0.95]])
        boxes = boxes * torch.tensor([width, height, width, height])
        targets = [{"boxes": boxes.to(device), "labels": torch.tensor([1, 2, 1], device=device)} for _ in range(batch)]
        yield images, targets


def _memory_of(arch: str, args, setup_: dict, rows: _Rows) -> None:
    """One architecture's rows; its model, optimiser and data die with this call."""
    import torch

    from trainables.architectures import FAMILIES
    from trainables.config import HParams, ModelConfig
    from trainables.freeze import apply_freeze
    from trainables.gpu_memory import canvas_megapixels
    from trainables.loop import LOSS_NAMES, _amp_dtype, _train_one_epoch
    from trainables.model import build_model
    from trainables.optim import build_optimizer, build_scheduler

    device = torch.device(args.device)
    height, width = setup_["memory_size"]
    start = time.perf_counter()
    sized = FAMILIES[arch] != "ssd"  # SSDlite resizes to 320x320 whatever it is given
    model_cfg = ModelConfig(architecture=arch, weights=None, **({"min_size": height, "max_size": width} if sized else {}))
    # (batch, side scale): batch 2 and 8 at the default size, then batch 8 of images twice as long each
    # way (6.6 Mpx a step, past a batch of 4 at torchvision's 800x1333); SSDlite: batch 2, 8 and 16
    points = [(2, 1), (8, 1), (8, 2)] if sized else [(2, 1), (8, 1), (16, 1)]
    if args.tiny:
        points = [(1, 1), (2, 1)]
    torch.manual_seed(0)
    model = build_model(model_cfg, ["a", "b"])
    freeze = apply_freeze(model, architecture=arch, depth=0)
    model.to(device)
    hp = HParams(optimizer="sgd", lr=0.002, momentum=0.9, batch_size=2)
    optimizer = build_optimizer([(n, p) for n, p in model.named_parameters() if p.requires_grad], hp)
    scheduler = build_scheduler(optimizer, hp, epochs=1, iters_per_epoch=1000)
    resize = model.transform.min_size, model.transform.max_size
    for amp in (True, False):
        amp_dtype = _amp_dtype(device, amp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        for batch, scale in points:
            h, w = (height * scale, width * scale) if sized else (320, 320)
            if scale != 1:
                model.transform.min_size, model.transform.max_size = (h,), w
            _reset_peak(device)
            data = _synthetic_batches(batch, h, w, setup_["memory_steps"], device)
            error = None
            try:
                _train_one_epoch(model, data, optimizer, scheduler, scaler, epoch=1, device=device,
                                 amp_dtype=amp_dtype, grad_clip_norm=None, loss_names=LOSS_NAMES[FAMILIES[arch]])
            except Exception as exc:  # an OOM or a missing kernel keeps the other rows
                error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                model.transform.min_size, model.transform.max_size = resize
            del data
            reserved = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else _peak_mib(device)
            rows.add({"arch": arch, "precision": "amp" if amp else "fp32",
                      "dtype": _amp_label(device) if amp else "fp32", "batch": batch, "min_size": h, "max_size": w,
                      "megapixels": canvas_megapixels(arch, h, w, [(h, w)]), "reserved_mib": reserved,
                      "allocated_mib": _peak_mib(device), "trainable_params": freeze.trainable_params,
                      "seconds": time.perf_counter() - start, "error": error})


def part_memory(args, setup_: dict, rows: _Rows) -> None:
    import gc

    import torch

    device = torch.device(args.device)
    for i, arch in enumerate(setup_["memory_archs"]):
        _memory_of(arch, args, setup_, rows)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            if i == 0 or i == len(setup_["memory_archs"]) - 1:  # after one architecture (a trial's), and at the end
                free, total = torch.cuda.mem_get_info(device)
                # what this process holds beside its allocator's blocks: context, kernels, library handles
                # (free memory is the card's: the parts run one at a time, so no other process counts)
                rows.add({"kind": "context", "after": arch, "card_mib": total / 2**20, "error": None,
                          "context_mib": (total - free - torch.cuda.memory_reserved(device)) / 2**20})


def memory_table(results: dict) -> dict | None:
    """The preflight's table (``trainables.gpu_memory.fit_table``) from the memory part's rows."""
    import torch
    import torchvision

    from trainables.gpu_memory import fit_table

    rows = results["parts"].get("memory", {}).get("rows", [])
    steps = [r for r in rows if r.get("kind") != "context" and not r.get("error")]
    if not steps:
        return None
    contexts = [r["context_mib"] for r in rows if r.get("kind") == "context"]
    context = max(contexts) if contexts else None  # the larger, on the safe side
    env = results["environment"]
    return fit_table(steps, card=env.get("gpu") or env["device"], context_mib=context,
                     versions={"torch": torch.__version__, "torchvision": torchvision.__version__})


def _write_memory_table(results: dict, setup_: dict, out_dir: Path) -> None:
    """``gpu_memory.json`` (what the packing preflight reads, once copied to trainables/) from the rows so far."""
    table = memory_table(results)
    if table is not None:
        (out_dir / "gpu_memory.json").write_text(json.dumps(table, indent=1))
        results["memory_table"] = {**table, "demo_estimate_mib": demo_estimate(table, setup_)}


def demo_estimate(table: dict, setup_: dict) -> float | None:
    """The table's estimate for the packing part's demo trial, to set beside its measured peak."""
    from trainables.config import TrialConfig
    from trainables.gpu_memory import estimate_mib

    cfg = _demo_trial(setup_)
    px = setup_["demo_px"]  # the demo dataset's images are px x px
    return estimate_mib(TrialConfig.model_validate({k: cfg[k] for k in ("model", "training", "hparams")}), table,
                        sizes=[(px, px)])


# --------------------------------------------------------------------------- driver

def _run_part(part: str, args, setup_path: Path, result: Path) -> dict:
    limit = TIME_LIMITS[part] * args.time_scale
    cmd = [sys.executable, __file__, "--worker", part, "--setup", str(setup_path), "--result", str(result),
           "--device", args.device] + (["--tiny"] if args.tiny else [])
    start = time.perf_counter()
    # its own process group: a part that runs over is killed with the trials it started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = f"timed out after {limit:.0f} s"
    rows = json.loads(result.read_text()) if result.is_file() else []
    if status != "ok" or any(r.get("error") for r in rows):
        print(output[-3000:], file=sys.stderr)
    return {"status": status, "seconds": time.perf_counter() - start, "time_limit_s": limit, "rows": rows,
            **({"log_tail": output[-2000:]} if status != "ok" else {})}


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(results: dict) -> list[str]:
    """One table of every part, then the targets judged from it."""
    lines = [f"device: {results['environment'].get('gpu') or results['environment']['device']}; "
             f"fp32 = {results['environment']['fp32_means']}"]
    parts = results["parts"]
    train = parts.get("train", {}).get("rows", [])
    if train:
        lines += ["", "1. train, batch 8 (tiny: 2)       img/s   peak MiB  vs same-loop fp32",
                  "   arch           loop     dtype   knobs"]
        for r in train:
            base = next((b for b in train if b["arch"] == r["arch"] and b["loop"] == r["loop"] and b["dtype"] == "fp32"
                         and not b["knobs"] and b.get("images_per_s")), None)
            ratio = r["images_per_s"] / base["images_per_s"] if base and r.get("images_per_s") else None
            lines.append(f"   {r['arch']:<14} {r['loop']:<8} {r['dtype']:<7} {','.join(r['knobs']) or '-':<16}"
                         f"{_fmt(r.get('images_per_s')):>7} {_fmt(r.get('peak_mib'), '.0f'):>9} {_fmt(ratio, '.2f'):>8}x"
                         + (f"  ERROR {r['error'][:60]}" if r.get("error") else ""))
    for r in parts.get("eval", {}).get("rows", []):
        lines.append(f"2. eval {r['arch']:<14} {r['eval_images_per_s']:.1f} img/s ({r['val_images']} images, "
                     f"COCO scoring included), {100 * r['eval_share_of_epoch']:.0f}% of an epoch")
    for r in parts.get("packing", {}).get("rows", []):
        mem = [t["gpu_reserved_mib"] or t["peak_rss_mib"] for t in r["trials"]]
        lines.append(f"3. packing {r['concurrent']} at a time: {r['trials_per_hour']:.0f} trials/h "
                     f"({_fmt(r['vs_one_at_a_time'], '.2f')}x), {r['trials_per_hour_in_loop']:.0f}/h in-loop, "
                     f"peak {max(mem):.0f} MiB per trial" + (f"  ERROR {r['error']}" if r.get("error") else ""))
    data = parts.get("data", {}).get("rows", [])
    model = {r["arch"]: r["images_per_s"] for r in train if r["loop"] == "boxtune" and r["dtype"] != "fp32"
             and not r["knobs"] and r.get("images_per_s")}
    for r in data:
        against = ", ".join(f"{a} {v:.1f}" for a, v in model.items()) or "-"
        lines.append(f"4. data path ({'cached' if r['cached'] else 'decoding every epoch'}, {r['workers']} workers): "
                     f"{r['images_per_s']:.1f} img/s against the model's {against} img/s")
    table = results.get("memory_table")
    if table:
        lines.append(f"5. memory (peak reserved MiB = base + per-image-megapixel slope x batch x Mpx; "
                     f"CUDA context {_fmt(table['cuda_context_mib'], '.0f')} MiB):")
        for arch, entry in table["architectures"].items():
            fits = [f"{p} {e['base_mib']:.0f} + {e['per_image_mpx_mib']:.0f}/Mpx (worst miss {e['max_residual_mib']:.0f})"
                    for p in ("amp", "fp32") if (e := entry.get(p))]
            lines.append(f"   {arch:<40} {'; '.join(fits)}")
        one = next((r for r in parts.get("packing", {}).get("rows", []) if r["concurrent"] == 1), None)
        measured = one["trials"][0]["gpu_reserved_mib"] if one else None
        lines.append(f"   demo trial: estimate {_fmt(table['demo_estimate_mib'], '.0f')} MiB, "
                     f"measured {_fmt(measured, '.0f')} MiB (packing, 1 at a time)")
    for r in parts.get("memory", {}).get("rows", []):
        if r.get("error"):
            lines.append(f"5. memory {r.get('arch')} batch {r.get('batch')} {r.get('precision')}: ERROR {r['error'][:80]}")
    lines += ["", "targets:"] + [f"  {t}" for t in judge(results)]
    for part, p in parts.items():
        if p["status"] != "ok":
            lines.append(f"part {part}: {p['status']}")
    return lines


def judge(results: dict) -> list[str]:
    parts = results["parts"]
    train = [r for r in parts.get("train", {}).get("rows", []) if r.get("images_per_s") and not r["knobs"]]

    def rate(arch, loop, dtype):
        return next((r["images_per_s"] for r in train if (r["arch"], r["loop"], r["dtype"]) == (arch, loop, dtype)), None)

    out = []
    fp32, amp = rate("R50-FPN", "boxtune", "fp32"), rate("R50-FPN", "boxtune", "bf16")
    out.append(f"bf16 >= 1.5x fp32 on R50-FPN: {amp / fp32:.2f}x, {'met' if amp / fp32 >= 1.5 else 'NOT met'}"
               if fp32 and amp else "bf16 >= 1.5x fp32 on R50-FPN: not measured")
    for arch in ARCHS:
        ours = next((r["images_per_s"] for r in train if r["arch"] == arch and r["loop"] == "boxtune" and r["dtype"] != "fp32"), None)
        plain = rate(arch, "plain", "fp16")
        if ours and plain:
            out.append(f"boxtune AMP >= plain AMP loop, {arch}: {ours / plain:.2f}x, {'met' if ours >= plain else 'NOT met'}")
    packing = {r["concurrent"]: r for r in parts.get("packing", {}).get("rows", [])}
    if 1 in packing and 4 in packing and packing[1]["trials_per_hour"]:
        x = packing[4]["trials_per_hour"] / packing[1]["trials_per_hour"]
        out.append(f"4 trials per GPU >= 2.5x the trials/h of 1: {x:.2f}x, {'met' if x >= 2.5 else 'NOT met'}")
    else:
        out.append("4 trials per GPU >= 2.5x the trials/h of 1: not measured")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, MobileNet only: the CPU smoke test")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--out", default=None, help="folder for gpu_results.json (default: $OUT, else the current folder)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every part's time limit")
    p.add_argument("--worker", choices=PARTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        setup_ = json.loads(Path(args.setup).read_text())
        {"train": part_train, "eval": part_eval, "packing": part_packing, "data": part_data,
         "memory": part_memory}[args.worker](
            args, setup_, _Rows(Path(args.result)))
        return 0

    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "gpu_results.json"
    packages = check_packages()
    print("packages: " + ", ".join(f"{k} {v}" for k, v in packages["versions"].items()))
    if packages["missing"]:
        print("MISSING: " + ", ".join(packages["missing"]) + " -- see benchmarks/gpu.sh's header", file=sys.stderr)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device visible; use --device cpu for the smoke test", file=sys.stderr)
            return 2
    # a rerun of some parts keeps the other parts' rows from the last run
    results = json.loads(result_path.read_text()) if result_path.is_file() and set(parts) != set(PARTS) else {}
    results.update(environment=_environment(args.device), packages=packages, tiny=args.tiny)
    results.setdefault("parts", {})
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        work = Path(tmp)
        setup_ = setup(args, work)
        results["setup"] = {k: v for k, v in setup_.items() if k not in ("work", "bench_manifest", "demo_data")}
        (work / "setup.json").write_text(json.dumps(setup_))
        for part in parts:
            print(f"part {part} (limit {TIME_LIMITS[part] * args.time_scale:.0f} s) ...", flush=True)
            results["parts"][part] = _run_part(part, args, work / "setup.json", work / f"{part}.json")
            print(f"part {part}: {results['parts'][part]['status']} in {results['parts'][part]['seconds']:.0f} s", flush=True)
            _write_memory_table(results, setup_, out_dir)  # at once: a run cut short later still has it
            result_path.write_text(json.dumps(results, indent=1))
    results["summary"] = summarize(results)
    result_path.write_text(json.dumps(results, indent=1))
    print("\n".join(results["summary"]))
    print(f"\nwritten: {result_path}")
    return 0 if all(results["parts"][x]["status"] == "ok" for x in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
