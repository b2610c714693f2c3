"""The pruned box predictor: COCO names, copied rows, and the score/box pairing check."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import get_model
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from trainables.errors import ConfigError, TrainingError
from trainables.heads import COCO_CATEGORIES, check_predictor, coco_label, prune_box_predictor


def test_coco_categories_are_torchvision_head_rows():
    assert len(COCO_CATEGORIES) == 91
    assert COCO_CATEGORIES[0] == "__background__"
    assert COCO_CATEGORIES.count("N/A") == 10
    assert len(set(COCO_CATEGORIES) - {"__background__", "N/A"}) == 80


@pytest.mark.parametrize("name,label", [("person", 1), ("bear", 23), ("cell phone", 77), ("toothbrush", 90)])
def test_coco_label(name, label):
    assert coco_label(name) == label
    assert COCO_CATEGORIES[label] == name


@pytest.mark.parametrize(
    "name,suggestion", [("cellphone", "'cell phone'"), ("Person", "'person'"), ("teddy", "'teddy bear'")]
)
def test_unknown_coco_name_suggests_closest(name, suggestion):
    with pytest.raises(ConfigError, match=f"unknown COCO category {name!r}.*closest: {suggestion}"):
        coco_label(name)


@pytest.mark.parametrize("name", ["N/A", "__background__"])
def test_placeholder_rows_are_not_categories(name):
    with pytest.raises(ConfigError, match="placeholder row"):
        coco_label(name)


def _source() -> FastRCNNPredictor:
    torch.manual_seed(0)
    return FastRCNNPredictor(16, 91)


@pytest.mark.parametrize("rows", [[0, 23], [0, 77, None, 1], [0, None], [0, 5, 5]])
def test_prune_copies_score_and_box_rows(rows):
    source = _source()
    torch.manual_seed(1)
    pruned = prune_box_predictor(source, rows)
    assert pruned.cls_score.out_features == len(rows) and pruned.bbox_pred.out_features == 4 * len(rows)
    for new, src in enumerate(rows):
        copied = [
            (pruned.cls_score.weight[new], source.cls_score.weight[src if src is not None else 0]),
            (pruned.cls_score.bias[new], source.cls_score.bias[src if src is not None else 0]),
        ]
        if src is None:
            # fresh initialisation: equal to no source row, score or box
            assert not any(torch.equal(pruned.cls_score.weight[new], w) for w in source.cls_score.weight)
            box = pruned.bbox_pred.weight[4 * new : 4 * new + 4]
            assert not any(torch.equal(box, source.bbox_pred.weight[4 * c : 4 * c + 4]) for c in range(91))
            continue
        for got, want in copied:
            assert torch.equal(got, want)
        assert torch.equal(
            pruned.bbox_pred.weight[4 * new : 4 * new + 4], source.bbox_pred.weight[4 * src : 4 * src + 4]
        )
        assert torch.equal(
            pruned.bbox_pred.bias[4 * new : 4 * new + 4], source.bbox_pred.bias[4 * src : 4 * src + 4]
        )


@pytest.mark.parametrize(
    "rows,message",
    [
        ([1, 23], r"source_rows\[0\] must be 0"),
        ([0, 91], r"source rows \[91\] out of range"),
        ([0], "at least one"),
    ],
)
def test_prune_rejects_bad_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        prune_box_predictor(_source(), rows)


def test_check_predictor_accepts_matching_head():
    model = get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=4
    )
    check_predictor(model, 3)
    with pytest.raises(TrainingError, match="expected 3 and 12"):
        check_predictor(model, 2)


def test_half_pruned_head_runs_silently_in_torchvision_but_fails_the_check():
    model = get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        weights=None,
        weights_backbone=None,
        num_classes=91,
        min_size=64,
        max_size=96,
    )
    # the classic mistake: a new cls_score, the COCO bbox_pred left in place
    model.roi_heads.box_predictor.cls_score = torch.nn.Linear(1024, 4)
    model.eval()
    with torch.no_grad():
        model([torch.rand(3, 64, 64)])  # torchvision raises nothing
    with pytest.raises(TrainingError, match=r"bbox_pred 364.*expected 4 and 16.*left with 91 classes"):
        check_predictor(model, 3)
