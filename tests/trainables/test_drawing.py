"""Detections drawn for people to read: captions on their class colour, none covering a better box's."""

from __future__ import annotations

import torch

from trainables.drawing import PALETTE, draw_detections


def _rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]


def _white(pixels: list[list[int]]) -> bool:
    return any(min(p) > 200 for p in pixels)  # the caption's text (anti-aliased)


def test_captions_sit_on_their_class_colour_and_a_clashing_one_is_left_out():
    image = torch.zeros(3, 80, 160, dtype=torch.uint8)
    detections = {
        "boxes": torch.tensor([[10.0, 10.0, 70.0, 60.0], [12.0, 12.0, 72.0, 62.0], [90.0, 10.0, 150.0, 60.0]]),
        "labels": torch.tensor([1, 2, 2]),
        "scores": torch.tensor([0.6, 0.9, 0.8]),
    }
    drawn = draw_detections(image, detections, names={1: "cat", 2: "dog"}, score_threshold=0.5, width=1)
    pixels = drawn.permute(1, 2, 0).reshape(-1, 3).tolist()
    # every box's outline is drawn: both class colours appear
    assert _rgb(PALETTE[0]) in pixels and _rgb(PALETTE[1]) in pixels
    # the 0.9 box's caption (dog, at 12 + 2 px) is a filled block of its colour with white text;
    # the 0.6 box's caption (cat) would cover it and is left out: no cat-coloured fill inside it
    caption = drawn[:, 15:22, 15:40].permute(1, 2, 0).reshape(-1, 3).tolist()
    assert caption.count(_rgb(PALETTE[1])) > 50 and _white(caption)
    assert _rgb(PALETTE[0]) not in caption
    # the box apart keeps its caption
    apart = drawn[:, 15:22, 95:120].permute(1, 2, 0).reshape(-1, 3).tolist()
    assert apart.count(_rgb(PALETTE[1])) > 50 and _white(apart)


def test_nothing_above_the_threshold_leaves_the_image_as_it_was():
    image = torch.full((3, 20, 20), 7, dtype=torch.uint8)
    detections = {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1]),
                  "scores": torch.tensor([0.1])}
    assert torch.equal(draw_detections(image, detections, names={1: "cat"}, score_threshold=0.5), image)
