"""A trial's TensorBoard events: grouped scalars per epoch, HParams session info, prediction images.

Tags are stable and grouped by section so TensorBoard's scalar view lays them out together:

* ``loss/loss``, ``loss/loss_classifier``, ``loss/loss_box_reg``, ``loss/loss_objectness``,
  ``loss/loss_rpn_box_reg`` (epoch means; Faster R-CNN), ``loss/loss_classification``,
  ``loss/loss_bbox_regression`` (RetinaNet, FCOS, SSDlite) and ``loss/loss_bbox_ctrness`` (FCOS)
* ``coco/AP`` ... ``coco/ARl`` (the 12 COCOeval numbers on the validation split; NaN where no
  object of that size exists)
* ``train/lr``, ``train/images_per_s``
* ``objective/objective``, ``objective/score`` (the chosen objective and the folded ranking
  scalar, see ``trainables.objective``)
* ``best/score``, ``best/AP``, ``best/AR100`` (best epoch so far by score: the HParams dashboard's
  metrics)
* ``coco_class/AP/<class>``, ``coco_class/AR100/<class>`` (per class, from the same COCOeval run;
  NaN for a class with no box in the validation split)
* images: ``val/predictions`` (predicted boxes in colour with class and score, ground truth in white)

Each trial is one HParams session carrying the hyperparameters that were set for it (the ones its
search space sampled, plus constants), so trials can be sorted side by side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import make_grid

from trainables.drawing import draw_detections
from trainables.reporting import hparam_value

__all__ = ["TrialWriter", "HPARAM_METRICS", "SCALAR_TAGS"]

HPARAM_METRICS = ("best/score", "best/AP", "best/AR100")
_LOSSES = ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",
           "loss_classification", "loss_bbox_regression", "loss_bbox_ctrness")
_COCO = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SCALAR_TAGS = {
    **{k: f"loss/{k}" for k in _LOSSES},
    **{k: f"coco/{k}" for k in _COCO},
    "lr": "train/lr",
    "images_per_s": "train/images_per_s",
    "objective": "objective/objective",
    "score": "objective/score",
    "objective_low": "objective/interval_low",  # the objective's 95% interval over the val images
    "objective_high": "objective/interval_high",
    "best_score": "best/score",
    "best_AP": "best/AP",
    "best_AR100": "best/AR100",
}
_CLASS_KEY = re.compile(r"^(AP|AP50|AP75|AR100)\[(.+)\]$")  # trainables.objective.class_key


class TrialWriter:
    """Writes one trial's events into ``log_dir`` (the trial's own folder)."""

    def __init__(self, log_dir: str | Path, *, hparams: dict[str, Any], image_every: int = 0, image_count: int = 4,
                 class_names: list[str] | None = None):
        self._writer = SummaryWriter(log_dir=str(log_dir))
        self._image_every = image_every
        self._image_count = image_count
        self._class_names = list(class_names or [])
        exp, ssi, sei = hparams_summary({k: hparam_value(v) for k, v in sorted(hparams.items())},
                                        dict.fromkeys(HPARAM_METRICS, 0.0))
        # The experiment summary (every trial's hparam names) is written once per sweep at its root;
        # a trial writes only its own session.
        self._writer.file_writer.add_summary(ssi)
        self._end = sei

    def epoch(self, metrics: dict[str, float], *, model=None, val_set=None, detections=None, device=None) -> None:
        step = int(metrics["epoch"])
        for key, tag in SCALAR_TAGS.items():
            if key in metrics:
                self._writer.add_scalar(tag, float(metrics[key]), step)
        for key, value in metrics.items():
            match = _CLASS_KEY.match(key)
            if match:
                self._writer.add_scalar(f"coco_class/{match[1]}/{match[2]}", float(value), step)
        if self._image_every and val_set is not None and detections is not None and step % self._image_every == 0:
            self._writer.add_image("val/predictions", self._draw(val_set, detections), step)
        self._writer.flush()

    def _draw(self, val_set, detections) -> torch.Tensor:
        tiles = []
        names = dict(enumerate(self._class_names, start=1))  # label -> class name
        for index in range(min(self._image_count, len(val_set))):
            image, target = val_set[index]
            image = (image.clamp(0, 1) * 255).to(torch.uint8) if image.is_floating_point() else image
            det = detections.get(int(target["image_id"]), {})
            tiles.append(draw_detections(image, det, names=names, score_threshold=0.3, width=2,
                                         ground_truth=target["boxes"]))
        height = max(t.shape[1] for t in tiles)
        width = max(t.shape[2] for t in tiles)
        padded = [torch.nn.functional.pad(t, (0, width - t.shape[2], 0, height - t.shape[1])) for t in tiles]
        return make_grid(padded, nrow=min(4, len(padded)), padding=2)

    def close(self) -> None:
        self._writer.file_writer.add_summary(self._end)
        self._writer.close()
