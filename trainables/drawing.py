"""Detections drawn on an image: one palette and one routine for predict's copies and TensorBoard's grid.

Predicted boxes take their class's colour (label ``l`` gets ``PALETTE[(l - 1) % 8]``, so a class
has the same colour everywhere) and a ``"name score"`` caption in white on the class colour; ground
truth, where drawn, is white. On a dense image a caption that would cover a higher-scoring box's
caption is left out (the box is still drawn).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchvision.utils import draw_bounding_boxes

__all__ = ["PALETTE", "class_colour", "draw_detections"]

# 8 colours that stay apart on photos (Sasha Trubetskoy's list, first eight)
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def class_colour(label: int) -> str:
    """The palette colour of class ``label`` (1-based; torchvision's background 0 never gets a box)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def draw_detections(image: torch.Tensor, detections: Mapping[str, torch.Tensor], *, names: Mapping[int, str],
                    score_threshold: float = 0.3, width: int | None = None,
                    ground_truth: torch.Tensor | None = None) -> torch.Tensor:
    """``image`` (uint8 ``[3, H, W]``) with the detections scoring at least ``score_threshold`` drawn on it.

    ``names`` maps a label to its class name (an unknown label is shown as its number). ``width``
    is the box line width in px; None gives ~0.5% of the shorter side. ``ground_truth`` boxes
    (XYXY) are drawn first, in white, 1 px.
    """
    if ground_truth is not None and len(ground_truth):
        image = draw_bounding_boxes(image, torch.as_tensor(ground_truth), colors="white", width=1)
    scores = detections.get("scores")
    if scores is None or not len(scores):
        return image
    keep = scores >= score_threshold
    if not keep.any():
        return image
    order = torch.argsort(scores[keep], descending=True, stable=True)  # the best box's caption wins a clash
    boxes = detections["boxes"][keep][order]
    labels = detections["labels"][keep][order].tolist()
    text = [f"{names.get(lab, lab)} {s:.2f}" for lab, s in zip(labels, scores[keep][order].tolist(), strict=True)]
    width = width if width is not None else max(1, round(min(image.shape[1:]) / 200))
    colours = [class_colour(lab) for lab in labels]
    return draw_bounding_boxes(image, boxes, labels=_uncovered(text, boxes, margin=width + 1), colors=colours,
                               width=width, fill_labels=True, label_colors="white", label_background_colors=colours)


def _uncovered(text: list[str], boxes: torch.Tensor, *, margin: int) -> list[str | None]:
    """Each caption where it would sit (inside its box's top-left corner, as torchvision puts it),
    or None where it would overlap an earlier one."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    placed: list[tuple[float, float, float, float]] = []
    out: list[str | None] = []
    for caption, box in zip(text, boxes.tolist(), strict=True):
        left, top, right, bottom = font.getbbox(caption)
        rect = (box[0] + margin + left - 1, box[1] + margin + top - 1, box[0] + margin + right + 1,
                box[1] + margin + bottom + 1)
        if any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3] for r in placed):
            out.append(None)
            continue
        placed.append(rect)
        out.append(caption)
    return out
