"""Open each image once at build time, and reconcile its EXIF orientation with its annotations.

Which frame are the boxes in? A JPEG with an EXIF orientation tag is stored in one frame (the raw
pixels) and displayed in another (the tag applied). Annotation tools differ: modern ones (CVAT,
recent labelImg, browsers) show and annotate the displayed image; older ones annotated raw
pixels. The recorded image size tells which one the annotator saw:

* orientation 5..8 (a quarter turn, width and height swap) and the recorded size equals the raw
  pixel size -> the annotator saw raw pixels: the boxes get the same transpose as the pixels;
* recorded size equals the displayed (transposed) size, or the orientation keeps the size
  (1..4) -> the boxes are already in the displayed frame and stay as they are;
* square images are ambiguous and are taken as displayed, like the case above;
* a recorded size that matches neither -> the real displayed size is used, the boxes are left
  as they are, and the mismatch is counted.

Every consumer (training, evaluation, export) then works in the displayed frame only, which is
what ``PIL.ImageOps.exif_transpose`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageProbe", "probe_image", "transpose_boxes", "annotated_frame"]

_ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
_QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap width and height


@dataclass(frozen=True)
class ImageProbe:
    """What one full decode of an image tells: raw size (px), EXIF orientation (1..8), PIL mode."""

    raw_size: tuple[int, int]
    orientation: int
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, EXIF orientation applied."""
        w, h = self.raw_size
        return (h, w) if self.orientation in _QUARTER_TURNS else (w, h)


def probe_image(path: Path) -> ImageProbe | str:
    """Decode ``path`` fully (truncated files fail here, not mid-training); an error is a str."""
    try:
        with Image.open(path) as image:
            try:
                orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
            except (ValueError, TypeError, OSError, SyntaxError):
                orientation = 1  # unreadable EXIF block: PIL's exif_transpose would ignore it too
            size, mode = image.size, image.mode
            image.load()
    except FileNotFoundError:
        return "image file not found"
    except UnidentifiedImageError:
        return "not a readable image file"
    except Image.DecompressionBombError as exc:
        return f"image too large to decode safely: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode image: {exc}"
    if orientation not in range(1, 9):
        orientation = 1
    return ImageProbe(raw_size=(int(size[0]), int(size[1])), orientation=orientation, mode=mode)


def annotated_frame(probe: ImageProbe, recorded: tuple[int, int] | None) -> tuple[bool, bool]:
    """(boxes need the EXIF transpose, recorded size matches neither frame); see module docstring."""
    raw, shown = probe.raw_size, probe.size
    if recorded is None:
        return False, False
    if probe.orientation in _QUARTER_TURNS and raw != shown and recorded == raw:
        return True, False
    return False, recorded not in (raw, shown)


def transpose_boxes(boxes: np.ndarray, orientation: int, raw_size: tuple[int, int]) -> np.ndarray:
    """Map xyxy boxes on raw pixels to the frame ``ImageOps.exif_transpose`` produces."""
    w, h = raw_size
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    if orientation == 2:  # mirror left-right
        out = (w - x2, y1, w - x1, y2)
    elif orientation == 3:  # rotate 180
        out = (w - x2, h - y2, w - x1, h - y1)
    elif orientation == 4:  # mirror top-bottom
        out = (x1, h - y2, x2, h - y1)
    elif orientation == 5:  # transpose: (x, y) -> (y, x)
        out = (y1, x1, y2, x2)
    elif orientation == 6:  # rotate 90 clockwise: (x, y) -> (h - y, x)
        out = (h - y2, x1, h - y1, x2)
    elif orientation == 7:  # transverse: (x, y) -> (h - y, w - x)
        out = (h - y2, w - x2, h - y1, w - x1)
    elif orientation == 8:  # rotate 90 counter-clockwise: (x, y) -> (y, w - x)
        out = (y1, w - x2, y2, w - x1)
    else:
        return boxes.copy()
    return np.stack(out, axis=1).astype(boxes.dtype, copy=False)
