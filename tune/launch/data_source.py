"""The dataset of a train or sweep config, read and validated once into a manifest.

Kept apart from ``tune.launch.sweep`` so that ``boxtune train`` imports neither Ray nor Optuna: a single
trial then runs where only torch, torchvision, pydantic and pycocotools are installed (an offline
GPU box, a debugger).
"""

from __future__ import annotations

from typing import Protocol

from trainables.data import Manifest, build_manifest, read_manifest
from trainables.errors import ConfigError
from tune.config import DataConfig

__all__ = ["prepare_manifest"]


class _HasData(Protocol):
    data: DataConfig


def prepare_manifest(cfg: _HasData) -> Manifest:
    """Read and validate ``cfg.data`` once (or load a prebuilt manifest)."""
    d = cfg.data
    if d.path.endswith(".parquet"):
        # the manifest fixes records and split; its seed is kept only as a record (`--best-config` writes it)
        # keys at their defaults do nothing either way: a full dump of a config (as a run's sweep.yaml) still loads
        ignored = sorted(k for k in d.model_fields_set - {"path", "seed"}
                         if getattr(d, k) != type(d).model_fields[k].get_default(call_default_factory=True))
        if ignored:
            keys = ", ".join(f"data.{k}" for k in ignored)
            raise ConfigError(f"{keys}: data.path {d.path} is a manifest, whose records and split are fixed, so "
                              f"{'this key does' if len(ignored) == 1 else 'these keys do'} nothing; remove "
                              f"{'it' if len(ignored) == 1 else 'them'}, or set data.path to the dataset itself")
        return read_manifest(d.path)
    return build_manifest(d.path, format=d.format, images_dir=d.images_dir, val_source=d.val_path,
                          val_fraction=d.val_fraction, test_source=d.test_path, test_fraction=d.test_fraction,
                          seed=d.seed, classes=d.classes, rename=d.rename or None, strict=d.strict)
