"""What a detector costs to run: latency at batch 1 on CPU, parameters, and the exported file's size.

Latency is measured once per (architecture, input size, class count) on the untrained model of the
trained model's structure, in a process of its own (``measure_in_subprocess``), never inside a
training trial, where the trial's own threads would compete with it.

The weights matter in one place: Faster R-CNN's box head (two large linear layers, the bulk of
the MobileNet models' time) runs once per RPN proposal, and the RPN drops proposals below its
score filter (0.05 for the MobileNet builders). An untrained RPN scores every proposal about 0.5,
so all of them (150 for the 320 model) reach the box head; a trained one keeps those near objects
(1 to 90 on five of the transfer benchmark's val images). Faster R-CNN's figure is therefore an upper
bound for the trained model (``benchmarks/bench_latency.py --trained RUN`` measures by how much),
and a sweep times its kept checkpoints again once trained (below).
The one-stage heads run on every location whatever the weights; only their post-processing
varies with how many boxes pass the score filter.

The timed span is one call ``model([image])`` in eval mode under ``torch.inference_mode()``: the
model's own transform (resize to the input size, normalisation), the backbone, the heads and the
post-processing (box decoding, the score filter, NMS, at most ``detections_per_img`` boxes, boxes
scaled back to the input image). Decoding the image file and making it a tensor are outside it.
The input is a ``3 x H x W`` float image at the model's input size, landscape 4:3 (``input_hw``).
The score filter in force is the model's own (torchvision's per family, what a ``.pt`` export
applies; ``score_threshold``): post-processing time depends on how many boxes pass it, so the mean
number of detections returned is recorded too.

Each figure is the median of ``repeats`` timed calls after ``warmup`` untimed ones, with the
spread beside it (the 10th and 90th percentiles, and the fastest and slowest call), and the
thread count fixed (``torch.set_num_threads``; ONNX Runtime's ``intra_op_num_threads``) and
recorded. With the ``onnx`` extra installed, the same model exported as ``boxtune export
--format onnx`` writes it is timed in ONNX Runtime on the same image.

**A trained model** (``CostRequest.checkpoint``): after a sweep's trials end, each kept trial's best
checkpoint is timed the same way (``tune.results.trained_costs``), as the plain build its ``.pt``
export loads, on real images instead of noise: the run's val images (``CostRequest.images``, a
file of uint8 tensors), each resized outside the timed span to the untrained figure's input
(``fit_to_input``), cycled through the ``repeats`` timed calls. Its detections per image
are what its score filter passes on those images, so the figure is what the shipped model costs
on the user's kind of image.

``python -m trainables.cost`` reads one JSON request on stdin and writes the figures as JSON on
stdout: what ``measure_in_subprocess`` runs.
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainables.errors import BoxtuneError

__all__ = ["CostRequest", "measure_cost", "measure_in_subprocess", "input_hw", "fit_to_input", "summarize_times",
           "structure_key", "COST_COLUMNS", "TIMED_COLUMNS", "COST_TAG_PREFIX"]

# the figures a cost measurement gives, in the order results and tables show them: what each result
# of a trial carries (``cost.measure``), and the ranking's columns
COST_COLUMNS = ("latency_ms", "latency_p10_ms", "latency_p90_ms", "onnx_latency_ms", "params", "file_mb")
# the ones that depend on the weights, which a trained model is timed for (the rest is the structure's)
TIMED_COLUMNS = ("latency_ms", "latency_p10_ms", "latency_p90_ms", "onnx_latency_ms")
COST_TAG_PREFIX = "cost/"  # TensorBoard: each trial's figures as cost/latency_ms, cost/params, ... at step 0
_MB = 1e6  # file sizes in megabytes (10^6 bytes), as disk tools and model hubs state them


@dataclass(frozen=True)
class CostRequest:
    """One model structure to measure: what a trial's export would be."""

    architecture: str
    num_classes: int  # K, background not counted
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # min_size/max_size, as a checkpoint carries them
    threads: int = 1
    warmup: int = 3
    repeats: int = 20
    onnx: bool = True  # also time the ONNX export, when onnxruntime is installed
    # a trained model instead of an untrained one: a checkpoint folder (or its checkpoint.pt), timed on
    # ``images``, a ``torch.save``d list of uint8 (3, H, W) images (the run's val images)
    checkpoint: str | None = None
    images: str | None = None

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes should be at least 1, got {self.num_classes}")
        if self.threads < 1 or self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"threads and repeats should be at least 1 and warmup at least 0, got "
                             f"threads {self.threads}, warmup {self.warmup}, repeats {self.repeats}")
        if (self.checkpoint is None) != (self.images is None):
            raise ValueError("a trained model is timed on images: give checkpoint and images together")


def structure_key(model_section: Mapping[str, Any]) -> str:
    """``architecture`` and the builder's size arguments of a trial's model section, as one string."""
    from trainables.config import ModelConfig
    from trainables.model import model_kwargs

    cfg = ModelConfig.model_validate({k: v for k, v in model_section.items() if k != "by_architecture"})
    return json.dumps({"architecture": cfg.architecture, **model_kwargs(cfg)}, sort_keys=True)


def input_hw(architecture: str, model_kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """The image the latency is measured on: the model's input size, landscape 4:3.

    The short side is ``min_size`` and the long side ``min_size * 4 / 3``, capped at ``max_size``,
    so the model's resize is an identity or close to one. SSDlite resizes every image to 320x320
    whatever it is given; it gets 320x427.
    """
    from trainables.architectures import FAMILIES

    if FAMILIES[architecture] == "ssd":
        short, cap = 320, 427
    else:
        short = int(model_kwargs.get("min_size", 800))
        cap = int(model_kwargs.get("max_size", 1333))
    return short, max(short, min(cap, round(short * 4 / 3)))


def fit_to_input(image, architecture: str, model_kwargs: Mapping[str, Any]):
    """``image`` (3, H, W) resized to ``input_hw``, as a float image in [0, 1]: what a trained model
    is timed on. Every image then has the pixels the untrained figure was timed on, so the two
    figures differ by the weights alone (an image wider than 4:3 would otherwise give the trained
    model more pixels, and a square one fewer); the content, stretched, is still a real image's."""
    import torch
    from torch.nn.functional import interpolate

    size = input_hw(architecture, model_kwargs)
    pixels = image.to(torch.float32) / 255.0 if not image.is_floating_point() else image.to(torch.float32)
    if tuple(pixels.shape[-2:]) == size:
        return pixels.contiguous()
    return interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)


def summarize_times(seconds: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentiles, fastest and slowest of timed calls, in milliseconds."""
    if not seconds:
        raise ValueError("no timed calls to summarize")
    ms = sorted(s * 1000.0 for s in seconds)
    if len(ms) == 1:
        p10 = p90 = ms[0]
    else:
        deciles = statistics.quantiles(ms, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    return {"median": statistics.median(ms), "p10": p10, "p90": p90, "min": ms[0], "max": ms[-1]}


def _timed(call, *, warmup: int, repeats: int) -> tuple[list[float], list[Any]]:
    """``call(i)`` for ``warmup`` untimed calls, then ``repeats`` timed ones (``i`` counts from 0
    in each): the timed calls' seconds and outputs."""
    for i in range(warmup):
        call(i)
    times, outs = [], []
    for i in range(repeats):
        start = time.perf_counter()
        outs.append(call(i))
        times.append(time.perf_counter() - start)
    return times, outs


def _trained(request: CostRequest):
    """The checkpoint's model in the plain build its ``.pt`` export loads, and its images fitted."""
    import torch

    from trainables.checkpoint import load_checkpoint
    from trainables.inference import trained_model

    path = Path(request.checkpoint)
    state = load_checkpoint(path.parent if path.is_file() else path)
    if state.architecture != request.architecture or len(state.classes) != request.num_classes:
        raise BoxtuneError(f"{request.checkpoint}: the checkpoint is {state.architecture} with {len(state.classes)} "
                           f"classes, not the {request.architecture} with {request.num_classes} asked to time")
    raw = torch.load(request.images, map_location="cpu", weights_only=True)
    if not raw:
        raise BoxtuneError(f"{request.images}: no images to time the trained model on")
    images = [fit_to_input(image, request.architecture, state.model_kwargs) for image in raw]
    return trained_model(state).model, images


def measure_cost(request: CostRequest) -> dict[str, Any]:
    """Measure ``request`` in this process (it sets torch's thread count; see ``measure_in_subprocess``).

    Returns ``latency_ms`` (median), ``latency_p10_ms``/``latency_p90_ms``, ``latency_min_ms``/
    ``latency_max_ms``, ``params``, ``file_mb`` (the ``.pt`` export's state dict as ``torch.save``
    writes it), and what they were measured under: ``weights`` (``untrained``, or ``trained`` for
    a checkpoint), ``images`` (how many distinct images the timed calls went through: 1 noise image
    untrained), ``threads``, ``repeats``, ``warmup``, ``input_hw``, ``score_threshold``,
    ``detections_per_img``, ``detections`` (mean returned per timed call), the torch version;
    with ONNX Runtime, ``onnx_latency_ms`` and its spread, and ``onnx_mb``; where the ONNX export or
    ONNX Runtime fails on the images, those stay None and ``onnx_error`` says why.
    """
    import torch

    from trainables.model import build_inference_model, max_detections, score_threshold

    torch.set_num_threads(request.threads)
    torch.manual_seed(0)
    h, w = input_hw(request.architecture, request.model_kwargs)
    if request.checkpoint is not None:
        model, images = _trained(request)
    else:
        model = build_inference_model(request.architecture, request.num_classes, dict(request.model_kwargs))
        images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))]
    model.eval()

    def run(i: int):
        with torch.inference_mode():
            return model([images[i % len(images)]])

    times, outs = _timed(run, warmup=request.warmup, repeats=request.repeats)
    torch_ms = summarize_times(times)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    figures: dict[str, Any] = {
        "architecture": request.architecture,
        "num_classes": request.num_classes,
        "model_kwargs": dict(request.model_kwargs),
        "weights": "untrained" if request.checkpoint is None else "trained",
        "images": min(len(images), request.repeats),
        "input_hw": [h, w],
        "threads": request.threads,
        "warmup": request.warmup,
        "repeats": request.repeats,
        "latency_ms": torch_ms["median"],
        "latency_p10_ms": torch_ms["p10"],
        "latency_p90_ms": torch_ms["p90"],
        "latency_min_ms": torch_ms["min"],
        "latency_max_ms": torch_ms["max"],
        "params": sum(p.numel() for p in model.parameters()),
        "file_mb": buffer.getbuffer().nbytes / _MB,
        "score_threshold": score_threshold(model),
        "detections_per_img": max_detections(model),
        "detections": statistics.fmean(len(out[0]["boxes"]) for out in outs),
        "torch": torch.__version__,
        "onnx_latency_ms": None,
        "onnx_latency_p10_ms": None,
        "onnx_latency_p90_ms": None,
        "onnx_mb": None,
    }
    if request.onnx:
        try:
            figures.update(_onnx_cost(model, images, request))
        except Exception as err:  # noqa: BLE001 - the export or ONNX Runtime failed: the torch figures stand
            figures["onnx_error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    return figures


def _onnx_cost(model, images, request: CostRequest) -> dict[str, Any]:
    """The same model as ``boxtune export --format onnx`` writes it, timed in ONNX Runtime; {} without it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    from trainables.inference import save_onnx

    with tempfile.TemporaryDirectory(prefix="boxtune-cost-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_onnx(model, path, size=images[0].shape[1])
        options = ort.SessionOptions()
        options.intra_op_num_threads = request.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = [{"image": image.numpy()} for image in images]
        times, _ = _timed(lambda i: session.run(None, feeds[i % len(feeds)]), warmup=request.warmup,
                          repeats=request.repeats)
        size = path.stat().st_size
    onnx_ms = summarize_times(times)
    return {"onnx_latency_ms": onnx_ms["median"], "onnx_latency_p10_ms": onnx_ms["p10"],
            "onnx_latency_p90_ms": onnx_ms["p90"], "onnx_mb": size / _MB, "onnxruntime": ort.__version__}


def measure_in_subprocess(request: CostRequest, *, timeout_s: float = 600.0) -> dict[str, Any]:
    """``measure_cost`` in a fresh Python process: nothing else of this process's threads or memory in the way."""
    cmd = [sys.executable, "-m", "trainables.cost"]
    env = dict(os.environ, OMP_NUM_THREADS=str(request.threads), MKL_NUM_THREADS=str(request.threads))
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(cmd, input=json.dumps(asdict(request)), capture_output=True, text=True,
                              timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise BoxtuneError(f"measuring {_what(request)}'s latency took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise BoxtuneError(f"measuring {_what(request)}'s latency failed: {tail[0]}")
    return json.loads(proc.stdout)


def _what(request: CostRequest) -> str:
    return request.architecture if request.checkpoint is None else f"the trained {request.architecture} in {request.checkpoint}"


def _main() -> int:
    request = CostRequest(**json.loads(sys.stdin.read()))
    figures = measure_cost(request)
    json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in figures.items()},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
