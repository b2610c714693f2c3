"""Generated COCO datasets of coloured shapes on textured backgrounds, for demos, tests and benchmarks.

One generator, :func:`make_shapes_dataset`, driven by a :class:`ShapeSpec` (the classes, each a
shape in a colour; the background styles; object sides and counts). Two specs are fixed here:

* ``DEMO_SPEC``, the demo and test data (:func:`make_demo_dataset`): three classes with
  non-contiguous COCO ids (5 circle, 17 square, 42 triangle), so every path that maps labels
  1..K back to dataset ids is exercised. Each shape is a solid, saturated, class-typical colour
  (jittered) on a grey, textured background with grey lines and blobs: easy enough for a small
  randomly initialised Faster R-CNN to learn on CPU in minutes, cluttered enough that "anything
  not grey" is not quite the whole answer.
* ``SOURCE_SPEC`` and ``TARGET_SPEC``, the transfer benchmark's pair (``benchmarks/``): eight
  classes named after COCO categories on three background styles, and a target with four of
  them plus one shape the source never shows, on another background, smaller and more crowded.

The same spec and seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "DEMO_CATEGORIES",
    "DEMO_SPEC",
    "SHAPES",
    "SOURCE_SPEC",
    "TARGET_SPEC",
    "ShapeClass",
    "ShapeSpec",
    "make_demo_dataset",
    "make_shapes_dataset",
]

SHAPES = ("circle", "square", "triangle", "diamond", "octagon", "ring", "cross", "hexagon")
BACKGROUNDS = ("grey", "tinted", "stripes", "checker")
_COLOUR_JITTER = 25  # per channel, +-
_MAX_OVERLAP = 0.1  # intersection / smaller box area allowed between two objects
_JPEG_QUALITY = 90
_REFERENCE_SIDE = 160  # px: ShapeSpec.sides are given at this image side and scaled with it


@dataclass(frozen=True)
class ShapeClass:
    """One class: its dataset id and name, the shape drawn and its colour (RGB, before jitter)."""

    dataset_id: int
    name: str
    shape: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class ShapeSpec:
    """Everything the images depend on besides their number, side and seed."""

    classes: tuple[ShapeClass, ...]
    backgrounds: tuple[str, ...] = ("grey",)  # one per image, drawn at random when there are several
    sides: tuple[int, int] = (24, 72)  # object side range, px at a 160 px image (scaled with it)
    counts: tuple[int, int] = (1, 4)  # objects per non-negative image, inclusive
    negative_share: float = 0.05  # images without objects
    description: str = "boxtune demo: coloured shapes on cluttered backgrounds"
    supercategory: str = "shape"

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("classes should not be empty")
        for c in self.classes:
            if c.shape not in SHAPES:
                raise ValueError(f"shape of class {c.name!r} should be one of {', '.join(SHAPES)}, got {c.shape!r}")
        for b in self.backgrounds:
            if b not in BACKGROUNDS:
                raise ValueError(f"background should be one of {', '.join(BACKGROUNDS)}, got {b!r}")
        if not (1 <= self.counts[0] <= self.counts[1]):
            raise ValueError(f"counts should be 1 <= low <= high, got {self.counts}")
        if not (4 <= self.sides[0] <= self.sides[1]):
            raise ValueError(f"sides should be 4 <= low <= high px, got {self.sides}")

    def key(self, *, num_images: int, image_size: int, seed: int) -> str:
        """A short hash of the spec and the dataset's size and seed (cache keys)."""
        text = json.dumps({**asdict(self), "num_images": num_images, "image_size": image_size, "seed": seed}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


DEMO_SPEC = ShapeSpec(
    classes=(
        ShapeClass(5, "circle", "circle", (220, 45, 40)),
        ShapeClass(17, "square", "square", (40, 185, 60)),
        ShapeClass(42, "triangle", "triangle", (45, 85, 225)),
    )
)
DEMO_CATEGORIES = {c.dataset_id: c.name for c in DEMO_SPEC.classes}

# Class names are torchvision's COCO category names, so ``model.class_map`` maps each to itself;
# ids are COCO's own. Shape and colour each tell the classes apart.
SOURCE_SPEC = ShapeSpec(
    classes=(
        ShapeClass(37, "sports ball", "circle", (245, 130, 20)),
        ShapeClass(13, "stop sign", "octagon", (200, 20, 30)),
        ShapeClass(38, "kite", "diamond", (235, 215, 30)),
        ShapeClass(85, "clock", "ring", (240, 240, 240)),
        ShapeClass(72, "tv", "square", (30, 60, 210)),
        ShapeClass(61, "cake", "triangle", (210, 40, 180)),
        ShapeClass(34, "frisbee", "hexagon", (30, 200, 210)),
        ShapeClass(84, "book", "square", (40, 160, 50)),
    ),
    backgrounds=("grey", "tinted", "stripes"),
    sides=(24, 72),
    counts=(1, 4),
    description="boxtune transfer source: eight COCO-named shapes on three background styles",
)
# Four source classes and "cross", a shape in a colour the source never shows; checkered
# backgrounds, smaller objects, more of them.
TARGET_SPEC = ShapeSpec(
    classes=(
        ShapeClass(1, "sports ball", "circle", (245, 130, 20)),
        ShapeClass(2, "stop sign", "octagon", (200, 20, 30)),
        ShapeClass(3, "kite", "diamond", (235, 215, 30)),
        ShapeClass(4, "clock", "ring", (240, 240, 240)),
        ShapeClass(5, "cross", "cross", (130, 50, 200)),
    ),
    backgrounds=("checker",),
    sides=(20, 60),
    counts=(2, 6),
    description="boxtune transfer target: four source classes and one new, on checkered backgrounds",
)


def _grey_background(rng: np.random.Generator, size: int) -> Image.Image:
    # Smooth grey gradient (upsampled 4x4 grid), pixel noise, then grey lines and blobs.
    grey = rng.uniform(70, 180, size=(4, 4, 1)) + rng.uniform(-12, 12, size=(4, 4, 3))
    return _clutter(rng, _noisy(rng, grey, size), size)


def _tinted_background(rng: np.random.Generator, size: int) -> Image.Image:
    # As grey, but each grid cell has its own muted colour.
    grey = rng.uniform(70, 180, size=(4, 4, 1)) + rng.uniform(-45, 45, size=(4, 4, 3))
    return _clutter(rng, _noisy(rng, grey, size), size)


def _stripes_background(rng: np.random.Generator, size: int) -> Image.Image:
    # Two grey levels in bands 4-16 px wide (at 160 px), horizontal or vertical, then noise and clutter.
    period = max(2, round(float(rng.uniform(4, 16)) * size / _REFERENCE_SIDE))
    levels = rng.uniform(60, 190, size=2)
    bands = levels[(np.arange(size) // period) % 2]
    plane = bands[:, None] if rng.random() < 0.5 else bands[None, :]  # rows or columns vary
    plane = np.broadcast_to(plane, (size, size))[..., None] + rng.uniform(-10, 10, size=3)
    noisy = plane + rng.normal(0.0, 8.0, size=(size, size, 3))
    return _clutter(rng, Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB"), size)


def _checker_background(rng: np.random.Generator, size: int) -> Image.Image:
    # A checkerboard of two muted colours, cells 8-24 px (at 160 px), with pixel noise; no clutter.
    cell = max(2, round(float(rng.uniform(8, 24)) * size / _REFERENCE_SIDE))
    colours = rng.uniform(80, 170, size=(2, 1, 1, 1)) + rng.uniform(-25, 25, size=(2, 1, 1, 3))
    index = ((np.arange(size)[:, None] // cell) + (np.arange(size)[None, :] // cell)) % 2
    plane = np.where(index[..., None] == 0, colours[0], colours[1])
    noisy = plane + rng.normal(0.0, 8.0, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _noisy(rng: np.random.Generator, grid: np.ndarray, size: int) -> Image.Image:
    low = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB").resize((size, size), Image.BILINEAR)
    noisy = np.asarray(low, dtype=np.float32) + rng.normal(0.0, 8.0, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _clutter(rng: np.random.Generator, image: Image.Image, size: int) -> Image.Image:
    # grey lines and blobs: structure that is not an object
    draw = ImageDraw.Draw(image)
    scale = size / _REFERENCE_SIDE

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


_BACKGROUND_STYLES = {"grey": _grey_background, "tinted": _tinted_background, "stripes": _stripes_background,
                      "checker": _checker_background}


def _colour(rng: np.random.Generator, base: tuple[int, int, int]) -> tuple[int, int, int]:
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(base, jitter, strict=True))  # type: ignore[return-value]


def _overlaps(box: tuple[int, int, int], placed: list[tuple[int, int, int]]) -> bool:
    x, y, s = box
    for px, py, ps in placed:
        iw = min(x + s, px + ps) - max(x, px)
        ih = min(y + s, py + ps) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > _MAX_OVERLAP * min(s, ps) ** 2:
            return True
    return False


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, s: int, fill: tuple[int, int, int]) -> None:
    # Every shape touches all four sides of pixels x..x+s-1, so its box in pixel-edge coordinates
    # is [x, y, x+s, y+s].
    e = s - 1  # last pixel offset
    h = e / 2
    if shape == "circle":
        draw.ellipse([x, y, x + e, y + e], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + e, y + e], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x + h, y), (x, y + e), (x + e, y + e)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x + h, y), (x + e, y + h), (x + h, y + e), (x, y + h)], fill=fill)
    elif shape == "octagon":
        c = e * 0.29  # corner cut of a regular octagon, share of the side
        draw.polygon([(x + c, y), (x + e - c, y), (x + e, y + c), (x + e, y + e - c), (x + e - c, y + e),
                      (x + c, y + e), (x, y + e - c), (x, y + c)], fill=fill)
    elif shape == "ring":
        draw.ellipse([x, y, x + e, y + e], outline=fill, width=max(2, s // 5))
    elif shape == "cross":
        t = max(2, s // 3)  # arm thickness
        lo = x + (s - t) // 2
        draw.rectangle([lo, y, lo + t - 1, y + e], fill=fill)
        lo = y + (s - t) // 2
        draw.rectangle([x, lo, x + e, lo + t - 1], fill=fill)
    else:  # hexagon, pointed left and right
        q = e / 4
        draw.polygon([(x + q, y), (x + e - q, y), (x + e, y + h), (x + e - q, y + e), (x + q, y + e), (x, y + h)],
                     fill=fill)


def make_shapes_dataset(
    out_dir: str | os.PathLike, spec: ShapeSpec, *, num_images: int = 240, image_size: int = 160, seed: int = 0
) -> Path:
    """Write ``out_dir/annotations.json`` and ``out_dir/images/*.jpg`` drawn from ``spec``; return the JSON's path."""
    if num_images < 1:
        raise ValueError(f"num_images should be >= 1, got {num_images}")
    if image_size < 48:
        raise ValueError(f"image_size should be >= 48 px, got {image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = image_size / _REFERENCE_SIDE
    min_side = max(8, round(spec.sides[0] * scale))  # px
    max_side = max(12, round(spec.sides[1] * scale), min_side)
    classes = spec.classes
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        # one style draws no random number for its choice, so the demo's bytes stay as they were
        style = spec.backgrounds[0] if len(spec.backgrounds) == 1 else spec.backgrounds[int(rng.integers(0, len(spec.backgrounds)))]
        image = _BACKGROUND_STYLES[style](rng, image_size)
        draw = ImageDraw.Draw(image)
        low, high = spec.counts
        count = 0 if rng.random() < spec.negative_share else int(rng.integers(low, high + 1))
        placed: list[tuple[int, int, int]] = []
        for _ in range(count):
            k = int(rng.integers(0, len(classes)))
            fill = _colour(rng, classes[k].colour)
            for _attempt in range(30):
                s = int(rng.integers(min_side, max_side + 1))
                x, y = (int(v) for v in rng.integers(0, image_size - s + 1, size=2))
                if not _overlaps((x, y, s), placed):
                    break
            else:
                continue  # no free spot: fewer objects in this image
            placed.append((x, y, s))
            _draw(draw, classes[k].shape, x, y, s, fill)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": classes[k].dataset_id,
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
            "description": spec.description,
            "version": "1.0",
            "seed": seed,
            "num_images": num_images,
            "image_size": image_size,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.dataset_id, "name": c.name, "supercategory": spec.supercategory} for c in classes],
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def make_demo_dataset(
    out_dir: str | os.PathLike, *, num_images: int = 240, image_size: int = 160, seed: int = 0
) -> Path:
    """Write the demo dataset (``DEMO_SPEC``) to ``out_dir``; return its ``annotations.json`` path."""
    return make_shapes_dataset(out_dir, DEMO_SPEC, num_images=num_images, image_size=image_size, seed=seed)
