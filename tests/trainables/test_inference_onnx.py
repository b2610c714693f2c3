"""``save_onnx``: the graph holds any number of proposals and detections, whatever the weights pass
on the image it was traced on (``trainables.inference``)."""

from __future__ import annotations

import pytest
import torch

from trainables.inference import save_onnx
from trainables.model import build_inference_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
numpy_helper = pytest.importorskip("onnx.numpy_helper")

RPN_BIAS = "model.rpn.head.cls_logits.bias"  # its name in the graph (save_onnx wraps the model as .model)


def _run(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image.numpy()})


def _with_initializer(path, out, name, value):
    graph = onnx.load(str(path))
    (init,) = [i for i in graph.graph.initializer if i.name == name]
    init.CopyFrom(numpy_helper.from_array(value.numpy(), name))
    onnx.save(graph, str(out))
    return out


def test_a_graph_traced_while_the_rpn_passes_nothing_holds_every_count(tmp_path):
    # a trained RPN scores the noise image the graph is traced on low and a real image high; here
    # the same weights with the RPN's objectness at sigmoid(-20): no proposal passes its 0.05 filter
    torch.manual_seed(0)
    model = build_inference_model("fasterrcnn_mobilenet_v3_large_fpn", 2, {"min_size": 96, "max_size": 96}).eval()
    loud = model.rpn.head.cls_logits.bias.detach().clone()
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.fill_(-20.0)
    path = tmp_path / "quiet.onnx"
    save_onnx(model, path, size=96)
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    # no proposal, so no detection: an empty result, not a failed Reshape
    boxes, labels, scores = _run(path, image)
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)
    # the same graph with the untrained objectness back (every proposal passes): what torch returns
    opened = _with_initializer(path, tmp_path / "loud.onnx", RPN_BIAS, loud)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.copy_(loud)
        want = model([image])[0]
    boxes, labels, scores = _run(opened, image)
    assert len(scores) == len(want["scores"]) > 0
    got = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "scores": torch.from_numpy(scores)}
    torch.testing.assert_close(got["scores"].sort(descending=True).values, want["scores"], atol=1e-3, rtol=0)
    # untrained scores are nearly equal, so order is float32 noise: each detection has its twin
    # (same label, score within 1e-3, box within 0.01 px)
    for box, label, score in zip(want["boxes"], want["labels"], want["scores"], strict=True):
        twins = (got["labels"] == label) & ((got["scores"] - score).abs() < 1e-3)
        assert twins.any() and (got["boxes"][twins] - box).abs().amax(dim=1).min() < 1e-2
