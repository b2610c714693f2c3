"""Training and evaluation transforms for detection samples, built from the hyperparameters.

A sample is ``transforms(image, target)`` with ``image`` a ``tv_tensors.Image`` (uint8, 3 x H x W)
and ``target = {"boxes": tv_tensors.BoundingBoxes (XYXY), "labels": int64 tensor, "image_id": int}``.
Every geometric change goes through torchvision.transforms.v2 kernels, which move the boxes with
the pixels; nothing here does box arithmetic by hand.

The training pipeline, in order (a transform whose probability is 0 is left out entirely):

1. photometric jitter (``jitter_p``): ColorJitter on the uint8 image, before any padding, so the
   padding keeps the fill colour;
2. zoom out (``zoom_out_p``): the image is placed on a canvas up to ``zoom_out_max`` times its
   size, filled with the ImageNet mean colour;
3. IoU-constrained crop (``crop_p``): SSD's RandomIoUCrop; it keeps the sample as it is for one
   of its seven draws, and always for a negative (an image with no boxes);
4. scale jitter (``scale_jitter_p``): :class:`CanvasScaleJitter`, see there;
5. horizontal flip (``hflip_p``), vertical flip (``vflip_p``);
6. ClampBoundingBoxes, then SanitizeBoundingBoxes, which drops boxes smaller than 1 px (and
   their labels), then ToDtype(float32, scale=True) for the image.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainables.config import HParams
from trainables.errors import ConfigError

__all__ = [
    "FILL_RGB",
    "CanvasScaleJitter",
    "build_eval_transforms",
    "build_train_transforms",
    "describe_transforms",
]

# ImageNet mean in uint8 units: after the detector's normalisation, padding reads as ~0.
FILL_RGB = (124, 116, 104)
_FILL = {tv_tensors.Image: list(FILL_RGB), "others": 0}


def _target_labels(inputs: Any) -> torch.Tensor | None:
    """SanitizeBoundingBoxes' labels_getter: target["labels"] of an ``(image, target)`` sample.

    Module-level (not a lambda) so DataLoader workers can pickle the pipeline.
    """
    target = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) == 2 else inputs
    return target.get("labels") if isinstance(target, dict) else None


class _NegativeSafeIoUCrop(v2.RandomIoUCrop):
    """RandomIoUCrop that returns a negative (no boxes) unchanged at once.

    The stock transform samples crops until one holds a box centre, which never happens without
    boxes; it only gets out when it draws its "keep as is" option, after up to hundreds of wasted
    draws. The IoU constraint means nothing without boxes, so a negative is kept as it is.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if v2.get_bounding_boxes(flat_inputs).numel() == 0:
            return {}
        return super().make_params(flat_inputs)


class CanvasScaleJitter(v2.Transform):
    """Rescale the content by a random factor in ``scale_range`` while keeping the canvas size.

    The image is resized by ``s``; for ``s > 1`` a random window of the original size is cut out
    of it, for ``s < 1`` it is padded back to the original size at a random offset. A plain
    resize would be undone by the detector, which resizes every image to ``min_size`` /
    ``max_size`` itself; keeping the canvas makes the objects really ``s`` times larger or
    smaller. Boxes cut by the window are clamped, and boxes cut away entirely become empty for
    SanitizeBoundingBoxes to drop.
    """

    def __init__(self, scale_range: tuple[float, float], fill: Any = None):
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range should be 0 < min <= max, got {scale_range}")
        self.scale_range = tuple(scale_range)
        self.fill = _FILL if fill is None else fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        s = lo + float(torch.rand(1)) * (hi - lo)
        new_h, new_w = max(1, round(h * s)), max(1, round(w * s))
        r = torch.rand(2)
        if new_h >= h and new_w >= w:  # zoom in: cut a window of the original size
            top, left = int((new_h - h + 1) * r[0]), int((new_w - w + 1) * r[1])
            return dict(size=[new_h, new_w], crop=dict(top=top, left=left, height=h, width=w), padding=None)
        top, left = int((h - new_h + 1) * r[0]), int((w - new_w + 1) * r[1])
        padding = [left, top, w - new_w - left, h - new_h - top]  # left, top, right, bottom (px)
        return dict(size=[new_h, new_w], crop=None, padding=padding)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)
        if params["crop"] is not None:
            return self._call_kernel(F.crop, out, **params["crop"])
        if isinstance(self.fill, dict):
            fill = self.fill.get(type(inpt), self.fill.get("others", 0))
        else:
            fill = self.fill
        return self._call_kernel(F.pad, out, padding=params["padding"], fill=fill)


def _check_no_op_knobs(hp: HParams) -> None:
    """An augmentation switched on with magnitudes that leave every sample unchanged is an error."""
    if hp.jitter_p > 0 and hp.brightness == hp.contrast == hp.saturation == hp.hue == 0:
        raise ConfigError(
            "hparams.jitter_p: colour jitter is on but brightness, contrast, saturation and hue are all 0"
        )
    if hp.zoom_out_p > 0 and hp.zoom_out_max == 1:
        raise ConfigError("hparams.zoom_out_max: must be > 1 when zoom_out_p > 0 (1 never pads)")
    if hp.scale_jitter_p > 0 and hp.scale_min == hp.scale_max:
        raise ConfigError(
            f"hparams.scale_min: scale jitter is on but scale_min == scale_max == {hp.scale_min}"
        )


def _train_steps(hp: HParams) -> list[tuple[str, v2.Transform]]:
    _check_no_op_knobs(hp)
    steps: list[tuple[str, v2.Transform]] = []
    if hp.jitter_p > 0:
        jitter = v2.ColorJitter(
            brightness=hp.brightness, contrast=hp.contrast, saturation=hp.saturation, hue=hp.hue
        )
        steps.append(
            (
                f"ColorJitter(brightness={hp.brightness}, contrast={hp.contrast}, "
                f"saturation={hp.saturation}, hue={hp.hue}) p={hp.jitter_p}",
                v2.RandomApply([jitter], p=hp.jitter_p),
            )
        )
    if hp.zoom_out_p > 0:
        steps.append(
            (
                f"RandomZoomOut(side_range=(1.0, {hp.zoom_out_max}), fill={FILL_RGB}) p={hp.zoom_out_p}",
                v2.RandomZoomOut(fill=_FILL, side_range=(1.0, hp.zoom_out_max), p=hp.zoom_out_p),
            )
        )
    if hp.crop_p > 0:
        steps.append((f"RandomIoUCrop p={hp.crop_p}", v2.RandomApply([_NegativeSafeIoUCrop()], p=hp.crop_p)))
    if hp.scale_jitter_p > 0:
        jitter = CanvasScaleJitter((hp.scale_min, hp.scale_max))
        steps.append(
            (
                f"CanvasScaleJitter(scale_range=({hp.scale_min}, {hp.scale_max})) p={hp.scale_jitter_p}",
                v2.RandomApply([jitter], p=hp.scale_jitter_p),
            )
        )
    if hp.hflip_p > 0:
        steps.append((f"RandomHorizontalFlip p={hp.hflip_p}", v2.RandomHorizontalFlip(p=hp.hflip_p)))
    if hp.vflip_p > 0:
        steps.append((f"RandomVerticalFlip p={hp.vflip_p}", v2.RandomVerticalFlip(p=hp.vflip_p)))
    steps += [
        ("ClampBoundingBoxes", v2.ClampBoundingBoxes()),
        ("SanitizeBoundingBoxes(min_size=1)", v2.SanitizeBoundingBoxes(labels_getter=_target_labels)),
        ("ToDtype(float32, scale=True)", v2.ToDtype(torch.float32, scale=True)),
    ]
    return steps


def build_train_transforms(hparams: HParams) -> v2.Compose:
    """The training pipeline for ``hparams`` (see the module docstring for the order)."""
    return v2.Compose([t for _, t in _train_steps(hparams)])


def build_eval_transforms() -> v2.Compose:
    """Evaluation: the image to float32 in [0, 1]; boxes and labels untouched."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def describe_transforms(hparams: HParams) -> list[str]:
    """One line per training transform, in order, for logs."""
    return [desc for desc, _ in _train_steps(hparams)]
