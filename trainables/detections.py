"""Each evaluated epoch's val detections, stored compactly in the trial's folder.

One Parquet file per epoch (``trainables.files.detections_file``), one row per detection, in the
order the model returned them per image::

    image_id   int64     the manifest's image id
    label      int16     the model's label, 1..K (torchvision counts background as class 0)
    score      float32   as the model returned it
    x1, y1, x2, y2  float32   px, in the image's own coordinates

The values are the model's float32 outputs unchanged, so evaluating the stored detections gives
the epoch's reported COCO numbers exactly. They are what intervals over val images, and any later
analysis, read: nothing runs a model again to get them. About 22 bytes per detection before
compression; a trial on 48 val images at 100 detections each stores ~100 KB per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_detections", "read_detections", "detections_table", "detections_from_table"]

_SCHEMA = pa.schema([("image_id", pa.int64()), ("label", pa.int16()), ("score", pa.float32()),
                     ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32())])


def _numpy(values: Any, dtype) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def detections_table(detections: Mapping[int, Mapping[str, Any]]) -> pa.Table:
    """Detections (image id -> {"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,)}) as one table."""
    ids, labels, scores, boxes = [], [], [], []
    for image_id, det in detections.items():
        b = _numpy(det["boxes"], np.float32).reshape(-1, 4)
        ids.append(np.full(len(b), int(image_id), dtype=np.int64))
        labels.append(_numpy(det["labels"], np.int16).reshape(-1))
        scores.append(_numpy(det["scores"], np.float32).reshape(-1))
        boxes.append(b)
    if not ids:
        return _SCHEMA.empty_table()
    b = np.concatenate(boxes)
    columns = [np.concatenate(ids), np.concatenate(labels), np.concatenate(scores), b[:, 0], b[:, 1], b[:, 2], b[:, 3]]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=_SCHEMA)


def detections_from_table(table: pa.Table) -> dict[int, dict[str, np.ndarray]]:
    """The stored rows as image id -> {"boxes", "scores", "labels"} (numpy, float32 / int64), in stored order."""
    if table.num_rows == 0:
        return {}
    ids = table.column("image_id").to_numpy()
    boxes = np.stack([table.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")], axis=1)
    scores, labels = table.column("score").to_numpy(), table.column("label").to_numpy().astype(np.int64)
    out: dict[int, dict[str, np.ndarray]] = {}
    # rows of one image are contiguous (written image by image)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
        out[int(ids[start])] = {"boxes": boxes[start:end], "scores": scores[start:end], "labels": labels[start:end]}
    return out


def write_detections(path: str | Path, detections: Mapping[int, Mapping[str, Any]]) -> Path:
    """Write one epoch's detections to ``path`` (atomically: a reader never sees half a file)."""
    from trainables.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(detections_table(detections), tmp, compression="zstd")
    return path


def read_detections(source) -> dict[int, dict[str, np.ndarray]]:
    """Read a file ``write_detections`` wrote (a path, or an open binary file)."""
    return detections_from_table(pq.read_table(source))
