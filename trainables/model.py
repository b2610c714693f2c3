"""Building the detector: torchvision's 91-class COCO model with its weights, cut to K classes.

``model.weights`` is one of

* a torchvision weights name (``"DEFAULT"``, ``"COCO_V1"``): torchvision downloads and caches it;
* a local checkpoint (``.pth``/``.pt``, or any existing file) holding a 91-class state_dict of the
  same architecture, raw or under a ``"model"``/``"state_dict"`` key (a torchvision COCO weights
  file works as is, which is how an offline machine uses them);
* ``None``: random initialisation.

With weights (name or file) the model has the structure torchvision builds for pretrained
weights: the backbone body of ``fasterrcnn_resnet50_fpn`` and of both MobileNetV3 variants uses
``FrozenBatchNorm2d`` (``fasterrcnn_resnet50_fpn_v2`` keeps ``BatchNorm2d`` everywhere). Nothing
is frozen here beyond that; ``trainables.freeze`` decides what trains.

Then the class head is pruned to the dataset's classes: the Faster R-CNN box predictor
(``trainables.heads``) or the RetinaNet, FCOS and SSDlite class convs
(``trainables.onestage_heads``). Each dataset class mapped by ``model.class_map`` to a COCO
category starts from that category's rows (channels, for every anchor), the others from a fresh
initialisation, and index 0 keeps COCO's background (closed, in the sigmoid heads). Class counts
K never include index 0: every family's model has K + 1 classes, as torchvision counts them.

The builder's keyword arguments depend on the family (``model_kwargs``): ``min_size``/``max_size``
for Faster R-CNN, RetinaNet and FCOS, nothing for SSDlite, whose builder fixes 320x320.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from trainables.architectures import ARCHITECTURES, FAMILIES, FAMILY_MODEL_KEYS
from trainables.config import ModelConfig
from trainables.errors import ConfigError
from trainables.freeze import freeze_batchnorm
from trainables.heads import check_predictor, coco_label, prune_box_predictor
from trainables.onestage_heads import check_class_head, prune_class_head

__all__ = ["COCO_NUM_CLASSES", "build_model", "build_inference_model", "cache_weights", "check_head", "check_model",
           "model_kwargs", "score_threshold", "set_score_threshold", "max_detections"]

COCO_NUM_CLASSES = 91  # rows of torchvision's COCO head, background and "N/A" placeholders included

# torchvision's trainable_backbone_layers maximum per architecture: passed with named weights so
# that torchvision freezes nothing (trainables.freeze does the freezing).
_ALL_BACKBONE_LAYERS = {
    "fasterrcnn_resnet50_fpn": 5,
    "fasterrcnn_resnet50_fpn_v2": 5,
    "fasterrcnn_mobilenet_v3_large_fpn": 6,
    "fasterrcnn_mobilenet_v3_large_320_fpn": 6,
    "retinanet_resnet50_fpn": 5,
    "retinanet_resnet50_fpn_v2": 5,
    "fcos_resnet50_fpn": 5,
    "ssdlite320_mobilenet_v3_large": 6,
}
# Where torchvision's pretrained builders put FrozenBatchNorm2d, and its eps there: resnet50_fpn's
# COCO_V1 weights (Faster R-CNN and RetinaNet v1) reset eps to 0.0 after loading (torchvision's
# overwrite_eps); FCOS keeps FrozenBatchNorm2d's 1e-5, as does the MobileNetV3 FPN backbone (the
# eps its BatchNorm2d has without weights). The v2 models and SSDlite keep BatchNorm2d. Built
# from a file, the same layers get the same, so a torchvision weights file computes exactly what
# the named weights do.
_PRETRAINED_FROZEN_BN: dict[str, tuple[str, float]] = {
    "fasterrcnn_resnet50_fpn": ("backbone.body", 0.0),
    "fasterrcnn_mobilenet_v3_large_fpn": ("backbone.body", 1e-5),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("backbone.body", 1e-5),
    "retinanet_resnet50_fpn": ("backbone.body", 0.0),
    "fcos_resnet50_fpn": ("backbone.body", 1e-5),
}
_CHECKPOINT_SUFFIXES = (".pth", ".pt")
_SHOWN_KEYS = 5  # state_dict keys quoted in a mismatch message


def model_kwargs(model_cfg: ModelConfig) -> dict[str, Any]:
    """The keyword arguments of torchvision's builder that a checkpoint must carry (resize, px).

    Per family: SSDlite's builder takes none (its size is fixed); RoI sampling is training-only.
    """
    keys = [k for k in ("min_size", "max_size") if k in FAMILY_MODEL_KEYS[FAMILIES[model_cfg.architecture]]]
    return {k: getattr(model_cfg, k) for k in keys}


def _score_owner(model: nn.Module) -> nn.Module:
    # Faster R-CNN filters in its box head (roi_heads.score_thresh, the builder's box_score_thresh);
    # RetinaNet, FCOS and SSDlite on the model itself (score_thresh)
    return model.roi_heads if hasattr(model, "roi_heads") else model


def score_threshold(model: nn.Module) -> float:
    """The model's own score filter: detections scoring at or below it are dropped before any caller sees them."""
    return float(_score_owner(model).score_thresh)


def set_score_threshold(model: nn.Module, threshold: float) -> nn.Module:
    """Set the model's own score filter (see ``architectures.DEFAULT_SCORE_THRESHOLDS``); returns ``model``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"score threshold should be in the range [0,1], got {threshold}")
    _score_owner(model).score_thresh = float(threshold)
    return model


def max_detections(model: nn.Module) -> int:
    """The most detections the model returns per image (torchvision's detections_per_img)."""
    return int(_score_owner(model).detections_per_img)


def check_head(model: nn.Module, architecture: str, num_classes: int) -> None:
    """Raise TrainingError unless ``model``'s class head fits K = ``num_classes`` (see the head modules)."""
    family = FAMILIES[architecture]
    if family == "fasterrcnn":
        check_predictor(model, num_classes)
    else:
        check_class_head(model, family, num_classes)


def build_model(model_cfg: ModelConfig, class_names: Sequence[str]) -> nn.Module:
    """The detector for one trial: 91-class model with its weights, head pruned to ``class_names``.

    ``class_names[k]`` is the name of label k + 1. Raises ConfigError for a class_map key that is
    not a dataset class, an unknown COCO name, an unknown weights name, or an unusable checkpoint.
    """
    source_rows = _source_rows(model_cfg.class_map, class_names)  # validate before the slow part
    model = _build_coco_model(model_cfg)
    family = FAMILIES[model_cfg.architecture]
    if family == "fasterrcnn":
        model.roi_heads.box_predictor = prune_box_predictor(model.roi_heads.box_predictor, source_rows)
    else:
        prune_class_head(model, family, source_rows)
    check_head(model, model_cfg.architecture, len(class_names))
    return model


def check_model(model_cfg: ModelConfig, class_names: Sequence[str], *, files: bool = True) -> None:
    """What ``build_model`` would refuse, found without building or reading anything large: the
    architecture, ``model.class_map`` against the dataset's classes and COCO's, a weights name for
    the architecture and, with ``files``, that a weights path is a file (a sweep checks this on the
    driver before Ray starts; on a cluster the file is the workers' to have)."""
    _check_architecture(model_cfg.architecture)
    _source_rows(model_cfg.class_map, class_names)
    weights = model_cfg.weights
    if weights is None:
        return
    if _is_checkpoint_path(weights):
        if files:
            _check_checkpoint_file(Path(weights).expanduser())
    else:
        _resolve_weights(model_cfg.architecture, weights)


def cache_weights(model_cfg: ModelConfig) -> Path | None:
    """Download a torchvision weights name into torch's cache (``torch.hub.get_dir()/checkpoints``)
    unless it is there already, as torchvision would on first use; the cached file, or None for a
    weights file or random weights. A download that fails is a ConfigError saying where to put the
    file instead. A local sweep calls this once on the driver, so its trials find the file cached
    rather than each downloading it (or each failing) on its own."""
    arch, weights = model_cfg.architecture, model_cfg.weights
    if weights is None or _is_checkpoint_path(weights):
        return None
    member = _resolve_weights(arch, weights)
    path = _cached_weights_path(member.url)
    if path.is_file():
        return path
    try:  # torch says where it downloads to
        torch.hub.load_state_dict_from_url(member.url, progress=True, check_hash=True, map_location="cpu")
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError; a bad hash a RuntimeError
        raise ConfigError(_download_error(arch, weights, member.url, err)) from None
    return path


def _cached_weights_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``'s file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _download_error(arch: str, weights: str, url: str, err: BaseException) -> str:
    reason = getattr(err, "reason", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
    return (f"model.weights: cannot download the {weights} weights of {arch} from {url} ({reason}); put the file "
            f"at {_cached_weights_path(url)}, or set model.weights to a local .pth file, or to null for random weights")


def build_inference_model(
    architecture: str, num_classes: int, model_kwargs: Mapping[str, Any], *, pretrained: bool = False
) -> nn.Module:
    """An untrained K-class model of the trained model's structure, to load its state_dict into.

    ``num_classes`` is K (background not counted); ``model_kwargs`` are the builder's keyword
    arguments the trained model had (``model_kwargs(model_cfg)``). ``pretrained`` is whether the
    trained model started from weights (``model.weights`` set): its backbone body then used
    FrozenBatchNorm2d with torchvision's eps, which no state_dict records (it differs from
    BatchNorm2d's for fasterrcnn_resnet50_fpn: 0.0 against 1e-5). Layers that ``apply_freeze``
    froze load into BatchNorm2d and compute the same in eval mode.
    """
    _check_architecture(architecture)
    model = get_model(
        architecture, weights=None, weights_backbone=None, num_classes=num_classes + 1, **dict(model_kwargs)
    )
    if pretrained:
        _to_pretrained_structure(model, architecture)
    check_head(model, architecture, num_classes)
    return model


def _source_rows(class_map: Mapping[str, str | None], class_names: Sequence[str]) -> list[int | None]:
    """COCO head row for each new label (0 = background), None where the class starts fresh."""
    if not class_names:
        raise ConfigError("the dataset has no classes")
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"dataset class names repeat: {list(class_names)}")
    unknown = [key for key in class_map if key not in class_names]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(class_names), n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"model.class_map: {', '.join(hints)} {'is' if len(unknown) == 1 else 'are'} not a dataset "
            f"class; dataset classes: {', '.join(map(repr, class_names))}"
        )
    rows: list[int | None] = [0]  # torchvision counts background as class 0
    for name in class_names:
        coco_name = class_map.get(name)
        rows.append(None if coco_name is None else coco_label(coco_name))
    return rows


def _build_coco_model(model_cfg: ModelConfig) -> nn.Module:
    arch, weights = model_cfg.architecture, model_cfg.weights
    _check_architecture(arch)
    common = dict(weights_backbone=None, num_classes=COCO_NUM_CLASSES, **model_kwargs(model_cfg))
    if FAMILIES[arch] == "fasterrcnn":
        # RoIs sampled per image for the box head's loss: training-only, so not part of model_kwargs
        common["box_batch_size_per_image"] = model_cfg.box_batch_size_per_image
    if weights is None:
        # no trainable_backbone_layers: without weights torchvision warns that it does nothing
        return get_model(arch, weights=None, **common)
    if _is_checkpoint_path(weights):
        path = Path(weights).expanduser()
        state_dict = _read_checkpoint(path)
        model = get_model(arch, weights=None, **common)
        _to_pretrained_structure(model, arch)
        _load_strict(model, state_dict, path, arch)
        return model
    member = _resolve_weights(arch, weights)
    try:  # torchvision downloads the file unless torch's cache has it
        return get_model(arch, weights=member, trainable_backbone_layers=_ALL_BACKBONE_LAYERS[arch], **common)
    except OSError as err:  # urllib's URLError and socket errors, not a traceback in every trial
        raise ConfigError(_download_error(arch, weights, member.url, err)) from None


def _resolve_weights(architecture: str, name: str):
    """The torchvision weights enum member called ``name`` ("DEFAULT" or a member name)."""
    enum = get_model_weights(architecture)
    accepted = list(enum.__members__)  # includes the DEFAULT alias
    if name not in accepted:
        raise ConfigError(
            f"model.weights: unknown weights {name!r} for {architecture}; accepted: "
            f"{', '.join(accepted)}, a local {'/'.join(_CHECKPOINT_SUFFIXES)} checkpoint path, or null"
        )
    return enum[name]


def _is_checkpoint_path(weights: str) -> bool:
    return (
        weights.endswith(_CHECKPOINT_SUFFIXES) or "/" in weights or "\\" in weights or Path(weights).is_file()
    )


def _check_checkpoint_file(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"model.weights: {path} is a folder; give the checkpoint file (a .pth or .pt state_dict)")
    if not path.is_file():
        raise ConfigError(f"model.weights: checkpoint file not found: {path}")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    _check_checkpoint_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only refusals all land here
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.weights: cannot read checkpoint {path}: {first_line}") from err
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"model.weights: {path} holds no state_dict (expected a mapping of tensors, raw or under "
            "a 'model' or 'state_dict' key)"
        )
    state_dict = dict(obj)
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from DataParallel
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = f"a {COCO_NUM_CLASSES}-class {arch} state_dict"
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when strict=False
        details = [line.strip() for line in str(err).splitlines()[1 : 1 + _SHOWN_KEYS] if line.strip()]
        raise ConfigError(f"model.weights: {path} does not match {expected}: {'; '.join(details)}") from None
    problems = []
    for what, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            problems.append(f"{len(keys)} {what} keys: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    if problems:
        raise ConfigError(f"model.weights: {path} does not match {expected}: {'; '.join(problems)}")


def _to_pretrained_structure(model: nn.Module, architecture: str) -> None:
    if architecture in _PRETRAINED_FROZEN_BN:
        prefix, eps = _PRETRAINED_FROZEN_BN[architecture]
        freeze_batchnorm(model, prefixes=[prefix], eps=eps)


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"model.architecture: unknown architecture {architecture!r}; accepted: {', '.join(ARCHITECTURES)}"
        )
