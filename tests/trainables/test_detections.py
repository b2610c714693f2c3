"""Stored val detections: the model's float32 outputs back exactly, in order, per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.detections import read_detections, write_detections


def _detections(seed: int, images: int = 4) -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for image_id in range(1, images + 1):
        n = int(torch.randint(0, 6, (1,), generator=g))  # images without detections too
        xy = torch.rand(n, 2, generator=g) * 90
        out[image_id * 7] = {"boxes": torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 1], 1),
                             "scores": torch.rand(n, generator=g), "labels": torch.randint(1, 4, (n,), generator=g)}
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_is_exact_and_keeps_the_order(tmp_path, seed):
    detections = _detections(seed)
    path = write_detections(tmp_path / "detections" / "epoch_0001.parquet", detections)
    back = read_detections(path)
    assert list(back) == [k for k, d in detections.items() if len(d["scores"])]  # images with detections, in order
    for image_id, got in back.items():
        want = detections[image_id]
        assert np.array_equal(got["boxes"], want["boxes"].numpy()) and got["boxes"].dtype == np.float32
        assert np.array_equal(got["scores"], want["scores"].numpy())
        assert np.array_equal(got["labels"], want["labels"].numpy()) and got["labels"].dtype == np.int64


def test_no_detections_at_all(tmp_path):
    path = write_detections(tmp_path / "e.parquet", {1: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                                         "labels": torch.zeros(0, dtype=torch.int64)}})
    assert read_detections(path) == {}
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
