"""The manifest: one Parquet file that holds a checked dataset, built once per sweep.

Every trial reads the manifest instead of the user's annotation files: reading it parses no XML
or JSON and opens no image. One row per image (boxes flattened to 4N floats), and the classes,
the source, the split settings and the repair summary as JSON under the schema metadata key
``b"boxtune"``. The same inputs give a byte-identical file. Coordinates and areas are float64, so
the evaluation annotations (``eval_*``) come back exactly as the annotation file wrote them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.atomic import atomic_path
from trainables.data.build import build_records
from trainables.data.records import CONFIG_KEYS, ClassInfo, ImageRecord, SettingNames
from trainables.data.summary import DataSummary, compute_summary
from trainables.errors import ConfigError, DataError

__all__ = ["MANIFEST_SCHEMA", "METADATA_KEY", "Manifest", "build_manifest", "read_manifest"]

METADATA_KEY = b"boxtune"
# 2: float64 boxes and areas, and the annotations as annotated for evaluation (``eval_*``)
_VERSION = 2
SPLITS = ("train", "val", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        # training boxes, repaired: xyxy px, flattened (4 values per box), and per box
        ("boxes", pa.list_(pa.float64())),
        ("labels", pa.list_(pa.int64())),
        ("category_ids", pa.list_(pa.int64())),
        ("iscrowd", pa.list_(pa.bool_())),
        ("area", pa.list_(pa.float64())),
        # evaluation annotations as the file gives them: [x, y, w, h] px flattened, and per box
        ("eval_xywh", pa.list_(pa.float64())),
        ("eval_category_ids", pa.list_(pa.int64())),
        ("eval_iscrowd", pa.list_(pa.bool_())),
        ("eval_area", pa.list_(pa.float64())),
        ("eval_difficult", pa.list_(pa.bool_())),
        ("split", pa.string()),  # "train", "val" or "test"
        ("jpeg_tail_missing", pa.bool_()),  # decoded with its end-of-image marker appended
    ]
)
# list column -> values per box
_LIST_COLUMNS = {
    "boxes": 4,
    "labels": 1,
    "category_ids": 1,
    "iscrowd": 1,
    "area": 1,
    "eval_xywh": 4,
    "eval_category_ids": 1,
    "eval_iscrowd": 1,
    "eval_area": 1,
    "eval_difficult": 1,
}


def _list_column(arrays: list[np.ndarray], dtype: pa.DataType) -> pa.ListArray:
    # One list per image; (N, 4) boxes flatten row-major to x1, y1, x2, y2, x1, ...
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    values = pa.array(flat.astype(dtype.to_pandas_dtype(), copy=False), type=dtype)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def _records_to_table(records: list[ImageRecord], metadata: dict[str, Any]) -> pa.Table:
    columns = {
        "image_id": pa.array([r.image_id for r in records], type=pa.int64()),
        "file_name": pa.array([r.file_name for r in records], type=pa.string()),
        "path": pa.array([r.path for r in records], type=pa.string()),
        "width": pa.array([r.width for r in records], type=pa.int32()),
        "height": pa.array([r.height for r in records], type=pa.int32()),
    }
    for name in _LIST_COLUMNS:
        dtype = MANIFEST_SCHEMA.field(name).type.value_type
        columns[name] = _list_column([getattr(r, name) for r in records], dtype)
    columns["split"] = pa.array([r.split for r in records], type=pa.string())
    columns["jpeg_tail_missing"] = pa.array([r.jpeg_tail_missing for r in records], type=pa.bool_())
    schema = MANIFEST_SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata).encode("utf-8")})
    return pa.Table.from_pydict(columns, schema=schema)


def _split_list(column: pa.ChunkedArray, per_box: int, dtype: type) -> list[np.ndarray]:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    out = [values[offsets[i] : offsets[i + 1]] for i in range(len(array))]
    return [v.reshape(-1, 4) for v in out] if per_box == 4 else out


def _table_to_records(table: pa.Table) -> list[ImageRecord]:
    plain = {
        name: table.column(name).to_pylist()
        for name in ("image_id", "file_name", "path", "width", "height", "split")
    }
    if "jpeg_tail_missing" in table.column_names:  # absent in manifests written before it existed
        plain["jpeg_tail_missing"] = table.column("jpeg_tail_missing").to_pylist()
    value_types = {name: MANIFEST_SCHEMA.field(name).type.value_type for name in _LIST_COLUMNS}
    lists = {
        name: _split_list(table.column(name), per_box, value_types[name].to_pandas_dtype())
        for name, per_box in _LIST_COLUMNS.items()
    }
    return [
        ImageRecord(**{k: v[i] for k, v in plain.items()}, **{k: v[i] for k, v in lists.items()})
        for i in range(table.num_rows)
    ]


class Manifest:
    """A checked dataset: image records, classes and the summary of what was repaired.

    Build one with ``build_manifest``, save it with ``write``, load it with ``read_manifest``.
    """

    def __init__(self, table: pa.Table) -> None:
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise DataError("not a boxtune manifest: its Parquet schema has no b'boxtune' metadata")
        self.table = table
        self.metadata: dict[str, Any] = json.loads(raw)
        version = self.metadata.get("version")
        if version != _VERSION:
            raise DataError(
                f"manifest version {version} was written by another boxtune, this one reads version "
                f"{_VERSION}; rebuild it from the dataset (boxtune data summary DATA --manifest FILE)"
            )
        self.classes = [ClassInfo(**c) for c in self.metadata["classes"]]
        self.summary = DataSummary.from_dict(self.metadata["summary"])
        self._records: list[ImageRecord] | None = None

    @property
    def num_classes(self) -> int:
        """K, not counting background."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def label_to_dataset_id(self) -> dict[int, int]:
        return {c.label: c.dataset_id for c in self.classes}

    @property
    def source(self) -> str:
        return self.metadata["source"]

    @property
    def format(self) -> str:
        return self.metadata["format"]

    @property
    def split_settings(self) -> dict[str, Any]:
        return self.metadata["split"]

    def records(self, split: str | None = None) -> list[ImageRecord]:
        """The image records, in image-id order; ``split`` "train", "val", "test" or None for all."""
        if split not in (None, *SPLITS):
            raise ValueError(f"split should be 'train', 'val', 'test' or None, got {split!r}")
        if self._records is None:
            self._records = _table_to_records(self.table)
        return [r for r in self._records if split is None or r.split == split]

    def write(self, path: str | os.PathLike) -> Path:
        """Write the Parquet file atomically (see ``trainables.atomic``)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            pq.write_table(self.table, tmp)
        return path

    def __repr__(self) -> str:
        s = self.summary
        return f"Manifest({self.source!r}, {self.format}, images={s.images}, classes={self.class_names})"


def build_manifest(
    source: str | os.PathLike,
    *,
    format: str = "auto",
    images_dir: str | os.PathLike | None = None,
    val_source: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    test_source: str | os.PathLike | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    classes: list[str] | None = None,
    rename: dict[str, str] | None = None,
    strict: bool = False,
    names: SettingNames = CONFIG_KEYS,
) -> Manifest:
    """Parse, check, repair and split a COCO, VOC or YOLO dataset (see ``trainables.data.build``).

    ``strict``: a JPEG cut short (otherwise decoded with its end marker restored) and an image that
    does not decode (otherwise left out) are errors. ``names``: how messages name the settings, the
    config's keys (``data.format``) by default, ``SUMMARY_FLAGS`` for ``boxtune data summary``.

    Raises ``DataError`` listing every problem in the data, ``ConfigError`` for a bad argument.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed should be an integer, got {seed!r}")
    result = build_records(
        source,
        format=format,
        images_dir=images_dir,
        val_source=val_source,
        val_fraction=val_fraction,
        test_source=test_source,
        test_fraction=test_fraction,
        seed=seed,
        strict=bool(strict),
        classes=list(classes) if classes is not None and not isinstance(classes, str) else classes,
        rename=dict(rename) if rename is not None else None,
        names=names,
    )
    summary = compute_summary(result.records, result.classes, result.repairs)
    metadata = {
        "version": _VERSION,
        "source": result.source,
        "format": result.format,
        "images_dir": str(Path(images_dir).expanduser().resolve()) if images_dir is not None else None,
        "split": result.split,
        "selection": {"classes": classes and list(classes), "rename": rename and dict(rename)},
        "classes": [asdict(c) for c in result.classes],
        "summary": asdict(summary),
    }
    return Manifest(_records_to_table(result.records, metadata))


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Load a manifest written by ``Manifest.write``; touches neither annotations nor images."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet manifest: {exc}") from None
    try:
        return Manifest(table)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
