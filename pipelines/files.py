"""Whole-file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def write_atomic(path: Union[str, os.PathLike], data: Union[str, bytes]) -> Path:
    """Write `data` (text as UTF-8, or bytes) to a hidden temp file beside `path`, then rename it over `path`.

    The temp name carries the pid, so two processes writing the same path never share a temp file; the rename is
    atomic on one filesystem, which is why the temp file lives in the same folder.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
