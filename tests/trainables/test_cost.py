"""What a model costs to run: latency with its spread, parameters and file size, measured in a process of its own."""

from __future__ import annotations

import io

import pytest
import torch

from trainables.checkpoint import TrialState, capture_rng, save_checkpoint
from trainables.config import TrialConfig
from trainables.cost import CostRequest, fit_to_input, input_hw, measure_in_subprocess, summarize_times
from trainables.errors import BoxtuneError
from trainables.model import build_inference_model, build_model, model_kwargs

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZE = {"min_size": 96, "max_size": 96}
REPEATS = 4


@pytest.fixture(scope="module")
def figures() -> dict:
    return measure_in_subprocess(CostRequest(ARCH, 2, SIZE, threads=1, warmup=1, repeats=REPEATS))


def test_latency_is_a_median_with_its_spread_and_the_conditions_recorded(figures):
    assert (figures["threads"], figures["warmup"], figures["repeats"]) == (1, 1, REPEATS)
    assert figures["input_hw"] == [96, 96]
    assert 0 < figures["latency_min_ms"] <= figures["latency_p10_ms"] <= figures["latency_ms"]
    assert figures["latency_ms"] <= figures["latency_p90_ms"] <= figures["latency_max_ms"]
    # the model's own filter and cap: what a .pt export of this structure applies
    assert (figures["score_threshold"], figures["detections_per_img"]) == (0.05, 100)
    assert 0 <= figures["detections"] <= 100
    assert figures["torch"] == torch.__version__


def test_parameters_and_file_size_are_the_export_structures(figures):
    model = build_inference_model(ARCH, 2, SIZE)
    assert figures["params"] == sum(p.numel() for p in model.parameters())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert figures["file_mb"] == buffer.getbuffer().nbytes / 1e6
    # a class more: a bigger head, so more parameters (the class count is part of what is measured)
    assert sum(p.numel() for p in build_inference_model(ARCH, 3, SIZE).parameters()) > figures["params"]


def test_onnx_runtime_times_the_onnx_export_of_the_same_model(figures):
    pytest.importorskip("onnxruntime")
    assert 0 < figures["onnx_latency_p10_ms"] <= figures["onnx_latency_ms"] <= figures["onnx_latency_p90_ms"]
    # the same weights as a graph: within a few percent of torch.save's size
    assert figures["onnx_mb"] == pytest.approx(figures["file_mb"], rel=0.05)


@pytest.mark.parametrize("arch, kwargs, expected", [
    (ARCH, {"min_size": 320, "max_size": 640}, (320, 427)),
    (ARCH, {"min_size": 96, "max_size": 96}, (96, 96)),
    ("retinanet_resnet50_fpn", {"min_size": 480, "max_size": 600}, (480, 600)),
    ("fcos_resnet50_fpn", {}, (800, 1067)),  # torchvision's defaults, 800 and 1333
    ("ssdlite320_mobilenet_v3_large", {}, (320, 427)),  # resized to 320x320 whatever it gets
])
def test_input_is_the_models_input_size_landscape_4_3(arch, kwargs, expected):
    assert input_hw(arch, kwargs) == expected


def test_summary_is_median_deciles_and_extremes_in_ms():
    assert summarize_times([0.004, 0.001, 0.003, 0.002, 0.005]) == pytest.approx(
        {"median": 3.0, "p10": 1.4, "p90": 4.6, "min": 1.0, "max": 5.0})
    assert summarize_times([0.002]) == {"median": 2.0, "p10": 2.0, "p90": 2.0, "min": 2.0, "max": 2.0}
    with pytest.raises(ValueError, match="no timed calls"):
        summarize_times([])


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 0}, "num_classes should be at least 1, got 0"),
    ({"threads": 0}, "threads 0"),
    ({"repeats": 0}, "repeats 0"),
])
def test_request_out_of_range_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CostRequest(**{"architecture": ARCH, "num_classes": 2, **kwargs})


def test_a_failed_measurement_names_the_architecture_and_why():
    with pytest.raises(BoxtuneError, match=r"^measuring fasterrcnn_nope's latency failed: .*fasterrcnn_nope"):
        measure_in_subprocess(CostRequest("fasterrcnn_nope", 2, SIZE, repeats=1, warmup=0, onnx=False))


def _checkpoint(folder, *, objectness_bias: float | None = None):
    """A checkpoint of ARCH at SIZE, 2 classes, as a trial writes it; with ``objectness_bias``, its
    RPN scores every anchor sigmoid(bias): at -20 no proposal passes the RPN's 0.05 filter."""
    cfg = TrialConfig.model_validate({"model": {"architecture": ARCH, "weights": None, **SIZE}})
    torch.manual_seed(0)
    model = build_model(cfg.model, ["a", "b"])
    if objectness_bias is not None:
        with torch.no_grad():
            model.rpn.head.cls_logits.bias.fill_(objectness_bias)
    state = TrialState(epoch=3, model=model.state_dict(), optimizer={}, scheduler={}, scaler={}, rng=capture_rng(),
                       config=cfg.model_dump(mode="json"), metrics={"AP": 0.0}, architecture=ARCH,
                       classes=[{"label": 1, "name": "a", "dataset_id": 1}, {"label": 2, "name": "b", "dataset_id": 2}],
                       model_kwargs=model_kwargs(cfg.model), history=[{"AP": 0.0}])
    return save_checkpoint(folder / "checkpoint", state).parent


def _images(path, shapes):
    g = torch.Generator().manual_seed(1)
    torch.save([torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes], path)
    return str(path)


def test_a_trained_checkpoint_is_timed_with_its_own_weights_on_the_images_given(tmp_path, figures):
    images = _images(tmp_path / "images.pt", [(120, 160), (160, 120), (96, 96)])
    request = CostRequest(ARCH, 2, SIZE, warmup=1, repeats=REPEATS, onnx=False, images=images,
                          checkpoint=str(_checkpoint(tmp_path / "quiet", objectness_bias=-20.0)))
    quiet = measure_in_subprocess(request)
    assert (quiet["weights"], quiet["images"], quiet["repeats"]) == ("trained", 3, REPEATS)
    # its RPN passes no proposal, so nothing reaches the box head: no detection on any image;
    # the untrained model of the same structure returns some on noise
    assert quiet["detections"] == 0 and figures["detections"] > 0
    assert (figures["weights"], figures["images"]) == ("untrained", 1)
    assert 0 < quiet["latency_p10_ms"] <= quiet["latency_ms"] <= quiet["latency_p90_ms"]
    assert quiet["params"] == figures["params"]  # the same structure
    # the checkpoint's own weights, untouched: an untrained RPN passes proposals and the box head finds boxes
    loud = measure_in_subprocess(CostRequest(ARCH, 2, SIZE, warmup=0, repeats=2, onnx=False, images=images,
                                             checkpoint=str(_checkpoint(tmp_path / "loud"))))
    assert loud["detections"] > 0


def test_a_checkpoint_of_another_model_than_asked_is_refused(tmp_path):
    images = _images(tmp_path / "images.pt", [(96, 96)])
    checkpoint = str(_checkpoint(tmp_path / "c"))
    with pytest.raises(BoxtuneError, match=rf"^measuring the trained retinanet_resnet50_fpn in {checkpoint}'s latency "
                                           rf"failed: .*is {ARCH} with 2 classes, not the retinanet_resnet50_fpn"):
        measure_in_subprocess(CostRequest("retinanet_resnet50_fpn", 2, SIZE, repeats=1, warmup=0, onnx=False,
                                          images=images, checkpoint=checkpoint))
    with pytest.raises(ValueError, match="checkpoint and images together"):
        CostRequest(ARCH, 2, SIZE, checkpoint=checkpoint)


@pytest.mark.parametrize("arch, kwargs, hw", [
    (ARCH, {"min_size": 96, "max_size": 96}, (480, 640)),
    (ARCH, {"min_size": 320, "max_size": 640}, (300, 1200)),  # a panorama: stretched, not more pixels
    ("ssdlite320_mobilenet_v3_large", {}, (480, 640)),
    (ARCH, {"min_size": 320, "max_size": 640}, (320, 427)),  # already at the input size: only made float
])
def test_images_are_resized_to_the_untrained_figures_input(arch, kwargs, hw):
    image = torch.full((3, *hw), 255, dtype=torch.uint8)
    fitted = fit_to_input(image, arch, kwargs)
    assert tuple(fitted.shape) == (3, *input_hw(arch, kwargs))
    assert fitted.dtype == torch.float32 and float(fitted.max()) == pytest.approx(1.0)
