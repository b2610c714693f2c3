"""The install itself: torchvision's compiled ops must load against the installed torch."""

import torch
import torchvision


def test_torchvision_compiled_ops_load():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    try:
        keep = torchvision.ops.nms(boxes, scores, 0.5)
    except RuntimeError as err:  # "operator torchvision::nms does not exist"
        raise AssertionError(
            f"torchvision {torchvision.__version__} cannot load its compiled ops against torch {torch.__version__} ({err}). "
            "Install a matching pair: remove both, then `pip install torchvision` and let pip choose the torch it was "
            "built against (never pin torch alone)."
        ) from err
    assert keep.tolist() == [0, 2]


def test_roi_align_runs():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = torchvision.ops.roi_align(features, [torch.tensor([[0.0, 0.0, 3.0, 3.0]])], output_size=1, aligned=False)
    assert out.shape == (1, 1, 1, 1)
    assert torch.isfinite(out).all()
