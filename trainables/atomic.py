"""Writing a file so that readers see the old file or the new one, never half of one.

The content goes to a hidden temporary file beside the target (same folder, so the same
filesystem), which then replaces the target with ``os.replace`` (atomic on POSIX and Windows). If
writing fails the temporary file is removed and the target is untouched. The writer creates the
temporary file itself, so it gets the umask's permissions (``mkstemp``'s would be 0600).

:func:`strict_json` is the JSON that boxtune writes into such files: strict (no ``NaN``), with a
metric that has nothing to measure (NaN) or an infinity written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "strict_json"]


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``target`` for the block to write; it replaces ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_json(value: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as strict JSON text, NaN and infinities as ``null`` (``default`` as for ``json.dumps``)."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False, default=default)
