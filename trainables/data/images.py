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

Decoding policy: the user's files are never modified, and every image is decoded once here, when
the manifest is built, so a trial never meets a broken image.

* A JPEG that a strict decode refuses but that decodes once its missing end-of-image marker
  (``FF D9``) is appended, in memory, is one whose tail was cut off (an interrupted copy or
  download). It is kept, marked ``jpeg_tail_missing`` in the manifest, and ``open_image`` appends
  the same marker every time it is read, so the build and every trial decode the same pixels.
  PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched: it would change every
  other decode in the process too, threads included.
* Anything else that does not decode is reported as such (the builder drops it, or refuses it
  under ``data.strict``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageProbe", "NOT_FOUND", "open_image", "probe_image", "transpose_boxes", "annotated_frame"]

_ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
_QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap width and height
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"  # SOI and EOI markers
NOT_FOUND = "image file not found"


@dataclass(frozen=True)
class ImageProbe:
    """What one full decode of an image tells: raw size (px), EXIF orientation (1..8), PIL mode."""

    raw_size: tuple[int, int]
    orientation: int
    mode: str
    jpeg_tail_missing: bool = False  # decodes only with the end-of-image marker appended

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, EXIF orientation applied."""
        w, h = self.raw_size
        return (h, w) if self.orientation in _QUARTER_TURNS else (w, h)


def open_image(source: str | Path | BinaryIO, *, jpeg_tail_missing: bool = False) -> Image.Image:
    """``Image.open`` of a path or a file object; with ``jpeg_tail_missing``, of its bytes plus the
    end-of-image marker (read into memory, the file itself is not changed)."""
    if not jpeg_tail_missing:
        return Image.open(source)
    if isinstance(source, (str, Path)):
        data = Path(source).read_bytes()
    else:
        data = source.read()
    return Image.open(io.BytesIO(data + _JPEG_END))


def _probe(source: str | Path | BinaryIO, jpeg_tail_missing: bool) -> ImageProbe:
    with open_image(source, jpeg_tail_missing=jpeg_tail_missing) as image:
        try:
            orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
        except (ValueError, TypeError, OSError, SyntaxError):
            orientation = 1  # unreadable EXIF block: PIL's exif_transpose would ignore it too
        size, mode = image.size, image.mode
        image.load()
    if orientation not in range(1, 9):
        orientation = 1
    return ImageProbe((int(size[0]), int(size[1])), orientation, mode, jpeg_tail_missing)


def _tail_cut(path: Path) -> bool:
    """A JPEG (starts with SOI) that does not end with EOI."""
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(-2, 2)
        return head == _JPEG_START and f.read(2) != _JPEG_END


def probe_image(path: Path) -> ImageProbe | str:
    """Decode ``path`` fully (broken files fail here, not mid-training); an error is a str.

    A JPEG whose strict decode fails is tried once more with its end-of-image marker appended
    (see the module docstring); ``jpeg_tail_missing`` says which decode worked.
    """
    try:
        try:
            return _probe(path, jpeg_tail_missing=False)
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, (FileNotFoundError, UnidentifiedImageError)) or not _tail_cut(path):
                raise
            try:
                return _probe(path, jpeg_tail_missing=True)
            except (OSError, SyntaxError, ValueError):
                raise exc from None
    except FileNotFoundError:
        return NOT_FOUND
    except UnidentifiedImageError:
        return "not a readable image file"
    except Image.DecompressionBombError as exc:
        return f"image too large to decode safely: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode image: {exc}"


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
