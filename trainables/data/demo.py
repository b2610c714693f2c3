"""A generated COCO dataset of coloured shapes on cluttered backgrounds, for demos and tests.

Three classes with non-contiguous COCO ids (5 circle, 17 square, 42 triangle), so every path
that maps labels 1..K back to dataset ids is exercised. Each shape is a solid, saturated,
class-typical colour (jittered) on a grey, textured background with grey lines and blobs: easy
enough for a small randomly initialised Faster R-CNN to learn on CPU in minutes, cluttered enough
that "anything not grey" is not quite the whole answer. The same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DEMO_CATEGORIES", "make_demo_dataset"]

DEMO_CATEGORIES = {5: "circle", 17: "square", 42: "triangle"}
_COLOURS = {"circle": (220, 45, 40), "square": (40, 185, 60), "triangle": (45, 85, 225)}  # RGB
_COLOUR_JITTER = 25  # per channel, +-
_NEGATIVE_SHARE = 0.05  # images without objects
_MAX_OVERLAP = 0.1  # intersection / smaller box area allowed between two objects
_JPEG_QUALITY = 90


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    # Smooth grey gradient (upsampled 4x4 grid), pixel noise, then grey lines and blobs.
    grey = rng.uniform(70, 180, size=(4, 4, 1)) + rng.uniform(-12, 12, size=(4, 4, 3))
    low = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "RGB").resize((size, size), Image.BILINEAR)
    noisy = np.asarray(low, dtype=np.float32) + rng.normal(0.0, 8.0, size=(size, size, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    scale = size / 160

    def clutter_colour() -> tuple[int, int, int]:
        v = int(rng.integers(40, 220))
        return tuple(int(np.clip(v + rng.integers(-10, 11), 0, 255)) for _ in range(3))  # type: ignore[return-value]

    for _ in range(int(rng.integers(3, 9))):
        xy = [float(v) for v in rng.uniform(0, size, size=4)]
        draw.line(xy, fill=clutter_colour(), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, size, size=2)
        rx, ry = rng.uniform(4, 20, size=2) * scale
        draw.ellipse([float(cx - rx), float(cy - ry), float(cx + rx), float(cy + ry)], fill=clutter_colour())
    return image


def _colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(_COLOURS[name], jitter, strict=True))  # type: ignore[return-value]


def _overlaps(box: tuple[int, int, int], placed: list[tuple[int, int, int]]) -> bool:
    x, y, s = box
    for px, py, ps in placed:
        iw = min(x + s, px + ps) - max(x, px)
        ih = min(y + s, py + ps) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > _MAX_OVERLAP * min(s, ps) ** 2:
            return True
    return False


def _draw(draw: ImageDraw.ImageDraw, name: str, x: int, y: int, s: int, fill: tuple[int, int, int]) -> None:
    # The shape fills pixels x..x+s-1, so its box in pixel-edge coordinates is [x, y, x+s, y+s].
    if name == "circle":
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=fill)
    elif name == "square":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=fill)
    else:
        draw.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=fill)


def make_demo_dataset(
    out_dir: str | os.PathLike, *, num_images: int = 240, image_size: int = 160, seed: int = 0
) -> Path:
    """Write ``out_dir/annotations.json`` and ``out_dir/images/*.jpg``; return the JSON's path."""
    if num_images < 1:
        raise ValueError(f"num_images should be >= 1, got {num_images}")
    if image_size < 48:
        raise ValueError(f"image_size should be >= 48 px, got {image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = image_size / 160
    min_side, max_side = max(8, round(24 * scale)), max(12, round(72 * scale))  # px
    ids, names = list(DEMO_CATEGORIES), list(DEMO_CATEGORIES.values())
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image = _background(rng, image_size)
        draw = ImageDraw.Draw(image)
        count = 0 if rng.random() < _NEGATIVE_SHARE else int(rng.integers(1, 5))
        placed: list[tuple[int, int, int]] = []
        for _ in range(count):
            k = int(rng.integers(0, len(names)))
            fill = _colour(rng, names[k])
            for _attempt in range(30):
                s = int(rng.integers(min_side, max_side + 1))
                x, y = (int(v) for v in rng.integers(0, image_size - s + 1, size=2))
                if not _overlaps((x, y, s), placed):
                    break
            else:
                continue  # no free spot: fewer objects in this image
            placed.append((x, y, s))
            _draw(draw, names[k], x, y, s, fill)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[k],
                    "bbox": [float(x), float(y), float(s), float(s)],
                    "area": float(s * s),
                    "iscrowd": 0,
                }
            )
        file_name = f"images/{image_id:05d}.jpg"
        image.save(out / file_name, "JPEG", quality=_JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
    data = {
        "info": {
            "description": "boxtune demo: coloured shapes on cluttered backgrounds",
            "version": "1.0",
            "seed": seed,
            "num_images": num_images,
            "image_size": image_size,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in DEMO_CATEGORIES.items()],
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path
