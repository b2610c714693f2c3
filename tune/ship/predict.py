"""Running an exported model on image files: COCO results JSON, optionally images with boxes drawn.

``boxtune predict best.pt photos/ extra.jpg --out detections.json --draw drawn/`` reads every
``.jpg``/``.jpeg``/``.png``/``.bmp`` in ``photos/`` (sorted by name, not recursive) and
``extra.jpg``, in that order. Images are decoded with Pillow, rotated by their EXIF orientation
and converted to RGB, so boxes are in the coordinates of the image as a viewer shows it.

The output is a COCO results list, one entry per detection scoring at least ``score_threshold``
(the model's own score filter is set to it too, so a threshold below the family's default,
0.05 for Faster R-CNN, keeps the detections that filter would drop)::

    {"image_id": 1, "file_name": "photos/a.jpg", "category_id": 17, "bbox": [x, y, w, h], "score": 0.93}

``image_id`` is the image's position in the input order, counting from 1; ``category_id`` is the
category id of the user's dataset (the export's ``classes[label - 1]["dataset_id"]``); ``bbox`` is
in pixels, top-left corner plus width and height. Nothing here needs Ray.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.atomic import atomic_write_text
from trainables.drawing import draw_detections
from trainables.errors import BoxtuneError
from trainables.inference import build_export_model
from trainables.model import set_score_threshold
from tune.ship.checks import IMAGE_SUFFIXES, check_export_path, check_predict_arguments, collect_images
from tune.ship.export import EXPORT_FORMAT, EXPORT_VERSION

__all__ = ["IMAGE_SUFFIXES", "load_export", "collect_images", "read_image", "detections_to_coco", "predict_files"]

def _read_payload(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch.load warns before refusing a TorchScript archive; the error below says more
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or zipfile.is_zipfile(path):
            raise BoxtuneError(f"refusing to load {path}: it contains pickled code/objects; boxtune exports "
                               "contain only tensors, numbers and strings") from None
        raise BoxtuneError(f"{path}: not a torch file (expected a .pt file written by `boxtune export`)") from None
    except RuntimeError as err:
        if "TorchScript" in str(err):
            raise BoxtuneError(f"{path}: a TorchScript archive; predict reads the .pt export "
                               "(load TorchScript exports with torch.jit.load)") from None
        raise BoxtuneError(f"{path}: not a torch file ({err})") from None
    except Exception as err:  # noqa: BLE001 - the legacy unpickler raises KeyError, EOFError, ...
        raise BoxtuneError(f"{path}: not a torch file ({type(err).__name__})") from None


def load_export(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``.pt`` export (eval mode, on the CPU) and its metadata (all but the weights).

    Anything else is a BoxtuneError: a missing file, a file torch cannot read, a file holding
    pickled objects (never loaded: no fallback to ``weights_only=False``), a dict that is not a
    boxtune export, weights that do not fit the architecture.
    """
    path = Path(path)
    check_export_path(path)
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        if isinstance(payload, dict) and "format_version" in payload and "model" in payload:
            raise BoxtuneError(f"{path}: a trial checkpoint, not an export; export its sweep or train folder "
                               f"first: boxtune export RUN --out best.pt")
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BoxtuneError(f"{path}: not a boxtune export (format {found!r}, expected {EXPORT_FORMAT!r})")
    if payload.get("format_version") != EXPORT_VERSION:
        raise BoxtuneError(f"{path}: export format_version {payload.get('format_version')!r}; "
                           f"this boxtune reads version {EXPORT_VERSION}")
    try:
        model = build_export_model(payload["architecture"], int(payload["num_classes"]), payload["model_kwargs"])
        model.load_state_dict(payload["state_dict"])
    except KeyError as err:
        raise BoxtuneError(f"{path}: export lacks {err}") from None
    except RuntimeError as err:
        raise BoxtuneError(f"{path}: weights do not fit {payload['architecture']}: {str(err).splitlines()[0]}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval(), meta


def read_image(path: Path) -> torch.Tensor:
    """uint8 ``[3, H, W]`` RGB, EXIF orientation applied; an unreadable file is a BoxtuneError naming it."""
    from PIL import Image, ImageOps
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
        raise BoxtuneError(f"{path}: cannot read this image ({err})") from None
    return pil_to_tensor(image)


def detections_to_coco(output: dict[str, torch.Tensor], *, image_id: int, file_name: str,
                       classes: Sequence[dict[str, Any]], score_threshold: float) -> list[dict[str, Any]]:
    """One image's detections as COCO results entries (``bbox`` as x, y, w, h in px)."""
    dataset_ids = {int(c["label"]): c["dataset_id"] for c in classes}
    results = []
    for box, label, score in zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist(), strict=True):
        if score < score_threshold:
            continue
        x1, y1, x2, y2 = box
        results.append({"image_id": image_id, "file_name": file_name, "category_id": dataset_ids[int(label)],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def _save_image(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    picture.save(path, **options)


def _draw_targets(images: list[Path], draw: Path) -> list[Path]:
    targets = [draw / p.name for p in images]
    names = [t.name for t in targets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BoxtuneError(f"--draw: several input images are called {', '.join(repeated)}; drawn copies would overwrite each other")
    for source, target in zip(images, targets, strict=True):
        if target.resolve() == source.resolve():
            raise BoxtuneError(f"--draw {draw}: would overwrite the input image {source}; choose another folder")
    return targets


def predict_files(model_path: str | os.PathLike, images: Sequence[str | os.PathLike], *, out: str | os.PathLike,
                  draw: str | os.PathLike | None = None, score_threshold: float = 0.3, batch_size: int = 4,
                  device: str | None = None) -> int:
    """Detect objects in ``images`` with the export ``model_path``; write COCO results to ``out``.

    Returns the number of detections written. With ``draw``, copies of the images with boxes,
    class names and scores are written there under the same file names.
    """
    check_predict_arguments(score_threshold=score_threshold, batch_size=batch_size, out=out)
    out = Path(out)
    try:
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise BoxtuneError(f"--device: {err}") from None
    files = collect_images(images)
    drawn = None
    if draw is not None:
        Path(draw).mkdir(parents=True, exist_ok=True)
        drawn = _draw_targets(files, Path(draw))
    model, meta = load_export(model_path)
    # the model's own filter too (Faster R-CNN and RetinaNet drop scores under 0.05, FCOS under 0.2):
    # below it, the threshold asked for would keep nothing more. Its filter is strict (>), predict's
    # keeps a score equal to the threshold: a hair lower (float32 scores are 6e-8 apart, relatively)
    set_score_threshold(model, score_threshold * (1 - 1e-6))
    model.to(target)
    names = {int(c["label"]): str(c["name"]) for c in meta["classes"]}
    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            decoded = [read_image(p) for p in batch]
            outputs = model([(img.to(target).float() / 255.0) for img in decoded])
            for offset, (path, image, output) in enumerate(zip(batch, decoded, outputs, strict=True)):
                # label 0 is background, or the closed reserved index of a sigmoid head: never a class
                real = output["labels"] > 0
                output = {k: v[real].cpu() for k, v in output.items()}
                index = start + offset
                results += detections_to_coco(output, image_id=index + 1, file_name=str(path),
                                              classes=meta["classes"], score_threshold=score_threshold)
                if drawn is not None:
                    # line width ~0.5% of the image's shorter side
                    _save_image(draw_detections(image, output, names=names, score_threshold=score_threshold), drawn[index])
    atomic_write_text(out, json.dumps(results))
    return len(results)
