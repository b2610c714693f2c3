"""How images are split into train, val and test (see ``build.py`` for the order of precedence).

Random splits are deterministic in (image ids, fraction, seed): ``split_val_ids`` permutes the
ids with ``numpy.random.default_rng(seed)``, exactly as before a test split existed, and
``split_test_ids`` draws from what is left with its own generator, ``default_rng((seed, 1))``, so
adding a test split never moves an image between train and val except into test.
"""

from __future__ import annotations

import math

import numpy as np

from trainables.data.records import RawDataset, RawImage, Repairs
from trainables.errors import ConfigError

__all__ = ["NOT_LISTED", "list_splits", "split_settings", "split_test_ids", "split_val_ids"]

NOT_LISTED = "image in no ImageSets list, left out"


def split_val_ids(image_ids: list[int], *, val_fraction: float, seed: int) -> set[int]:
    """The ids of the validation images: deterministic in (ids, val_fraction, seed)."""
    ids = sorted(image_ids)
    n = len(ids)
    if val_fraction <= 0 or n < 2:
        return set()
    n_val = min(n - 1, max(1, math.floor(val_fraction * n + 0.5)))  # keep >= 1 train image
    order = np.random.default_rng(seed).permutation(n)
    return {ids[i] for i in order[:n_val].tolist()}


def split_test_ids(train_ids: list[int], *, total: int, test_fraction: float, seed: int) -> set[int]:
    """The ids of the test images, drawn from ``train_ids``: ``test_fraction`` of ``total`` images.

    Its own generator, ``default_rng((seed, 1))``, so the val split drawn with ``seed`` is the same
    with or without a test split; at least one train image stays.
    """
    ids = sorted(train_ids)
    if test_fraction <= 0 or len(ids) < 2:
        return set()
    n_test = min(len(ids) - 1, max(1, math.floor(test_fraction * total + 0.5)))
    order = np.random.default_rng((seed, 1)).permutation(len(ids))
    return {ids[i] for i in order[:n_test].tolist()}


def list_splits(
    raw: RawDataset, *, val_given: bool, test_given: bool, repairs: Repairs
) -> list[tuple[RawImage, str | None]]:
    """(image, split or None) from VOC ImageSets lists; unlisted images are left out and listed."""
    lists = raw.split_lists
    if lists is None:
        return [(image, None) for image in raw.images]
    if test_given and "test" in lists:
        raise ConfigError(
            f"test_path: {raw.source} has its own test list (ImageSets/Main/test.txt); remove test_path"
        )
    where: dict[str, str | None] = {}
    for split, stems in lists.items():
        if split == "test" or not val_given:
            for stem in stems:
                where.setdefault(stem, None if split == "trainval" else split)
    pairs = []
    for image in raw.images:
        if image.key in where:
            pairs.append((image, where[image.key]))
        elif val_given:
            pairs.append((image, None))  # train/val lists ignored: val comes from val_path
        else:
            repairs.image(NOT_LISTED, image.file_name, dropped=True)
    return pairs


def split_settings(layout, raws, val_source, test_source, val_fraction: float, seed: int) -> dict:
    """How the split was made, for the manifest (``summary.py`` puts it in words).

    ``raws``: (layout, part, split, RawDataset) per part read, the dataset's own parts first.
    """
    main = [(part, split, raw) for lay, part, split, raw in raws if lay is layout]
    if val_source is not None:
        split = {"method": "val_source", "val_source": str(raws[len(main)][3].source)}
    elif len(main) == 1 and main[0][2].split_lists is not None:
        split = {"method": "imagesets", "lists": main[0][2].split_files}
    elif any(part.split is not None for part, _, _ in main):
        split = {"method": "layout", "parts": {part.label: part.split for part, _, _ in main}}
    else:
        split = {"method": "fraction", "val_fraction": float(val_fraction), "seed": int(seed)}
    if test_source is not None:
        split["test_source"] = str(raws[-1][3].source)
    return split
