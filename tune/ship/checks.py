"""What ``boxtune export`` and ``boxtune predict`` check before they load anything.

Nothing here imports torch (seconds to import), so a missing file, a folder given for a file or a
threshold out of range is one line at once, from the CLI and from the library functions alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from trainables.errors import BoxtuneError

__all__ = ["IMAGE_SUFFIXES", "EXPORT_FORMATS", "check_export_arguments", "check_export_path", "check_predict_arguments",
           "collect_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
EXPORT_FORMATS = ("pt", "torchscript", "onnx")


def check_export_arguments(out: str | os.PathLike, fmt: str, score_threshold: float | None) -> None:
    """``boxtune export``'s format, ``--out`` (a file name, not a folder) and ``--score-threshold``."""
    if fmt not in EXPORT_FORMATS:
        raise BoxtuneError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if Path(out).is_dir():
        raise BoxtuneError(f"--out {out} is a folder; give a file name such as {Path(out) / 'best.pt'}")
    if score_threshold is not None:
        if fmt == "pt":
            raise BoxtuneError("--score-threshold is baked into torchscript and onnx exports; a .pt export takes "
                               "it when it runs (boxtune predict --score-threshold)")
        if not 0.0 <= score_threshold <= 1.0:
            raise BoxtuneError(f"--score-threshold should be in [0, 1], got {score_threshold}")


def check_export_path(path: str | os.PathLike) -> None:
    """A BoxtuneError unless ``path`` is a file; a run folder is named as one, with the export that reads it."""
    path = Path(path)
    if path.is_dir():
        raise BoxtuneError(f"{path}: a folder; predict reads an export file. For a sweep or train folder: "
                           f"boxtune export {path} --out best.pt, then boxtune predict best.pt ...")
    if not path.is_file():
        raise BoxtuneError(f"{path}: no such file")


def check_predict_arguments(*, score_threshold: float, batch_size: int, out: str | os.PathLike) -> None:
    """``boxtune predict``'s ``--score-threshold``, ``--batch-size`` and ``--out``."""
    if not 0.0 <= score_threshold <= 1.0:
        raise BoxtuneError(f"--score-threshold should be in [0, 1], got {score_threshold}")
    if batch_size < 1:
        raise BoxtuneError(f"--batch-size should be >= 1, got {batch_size}")
    if Path(out).is_dir():
        raise BoxtuneError(f"--out {out} is a folder; give a file name such as {Path(out) / 'detections.json'}")


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images sorted by name; a missing path is an error."""
    images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BoxtuneError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise BoxtuneError(f"{path}: no such file or folder")
    if not images:
        raise BoxtuneError("no images given")
    return images
