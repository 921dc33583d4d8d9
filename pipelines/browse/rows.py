"""Every row of a run, kept or rejected, as the columns the browser's table filters and sorts on.

Kept rows come from each committed shard's index and the `json` members of its tar (the phrases are only there);
rejected rows from the shard's rejects file, grouped by reason as `stats.json` groups them. A tar is read header by
header, seeking past the array members; parsing headers and json is Python work, so shards go to processes.
"""

from __future__ import annotations

import json
import math
import tarfile
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from annotate.errors import PiteError, SchemaError
from pipelines.annotate.stats import reason_class
from pipelines.shards import list_done_shards, shard_paths

@dataclass
class RunRows:
    """Columns of the table, one entry per row: kept samples in shard order, then the rejects."""

    key: list[str] = field(default_factory=list)  # the sample's key; a reject's video_id
    video_id: list[str] = field(default_factory=list)
    shard: list[str] = field(default_factory=list)  # tar stem, e.g. "pite-000003"
    caption: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)  # least trusted object's; NaN without one
    objects: list[int] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)  # seconds; NaN for a reject
    phrases: list[list[str]] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)  # "" for a kept sample, else "stage: class"
    message: list[str] = field(default_factory=list)  # a reject's full error

    def __len__(self) -> int:
        return len(self.key)

    def extend(self, other: "RunRows") -> None:
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))


def shard_json(tar: Path) -> dict[str, dict]:
    """key -> the `json` member of every sample of one shard tar, without reading its arrays."""
    out = {}
    try:
        with tarfile.open(tar, mode="r:") as tf:
            for info in tf:
                base, _, suffix = info.name.partition(".")
                if suffix == "json":
                    out[base] = json.loads(tf.extractfile(info).read())
    except (tarfile.TarError, OSError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{tar}: unreadable ({exc})") from exc
    return out


def _least(values) -> float:
    known = [v for v in values or [] if v is not None]
    return min(known) if known else math.nan


def shard_rows(run: Path, shard: int) -> RunRows:
    """The rows of one committed shard: its samples (index order) then its rejects."""
    paths = shard_paths(run, shard)
    stem = paths["tar"].stem
    metas = shard_json(paths["tar"])
    rows = RunRows()
    for r in pq.read_table(paths["index"], columns=["key", "video_id", "caption", "confidence", "n_objects", "duration"]
                           ).to_pylist():
        meta = metas.get(r["key"])
        if meta is None:
            raise SchemaError(f"{paths['index']}: key {r['key']!r} is not in {paths['tar'].name}")
        rows.key.append(r["key"])
        rows.video_id.append(r["video_id"])
        rows.shard.append(stem)
        rows.caption.append(r["caption"])
        rows.confidence.append(_least(r["confidence"]))
        rows.objects.append(int(r["n_objects"]))
        rows.duration.append(float(r["duration"]))
        rows.phrases.append([o["phrase"] for o in meta.get("objects", [])])
        rows.reason.append("")
        rows.message.append("")
    for r in pq.read_table(paths["rejects"]).to_pylist():
        rows.key.append(r["video_id"])
        rows.video_id.append(r["video_id"])
        rows.shard.append(stem)
        rows.caption.append("")
        rows.confidence.append(math.nan)
        rows.objects.append(0)
        rows.duration.append(math.nan)
        rows.phrases.append([])
        rows.reason.append(f"{r['stage']}: {reason_class(r['error'])}")
        rows.message.append(r["error"])
    return rows


def read_rows(run: str | Path, workers: int = 1) -> RunRows:
    """Every row of every committed shard of a run folder; kept rows first, then rejects, each in shard order."""
    run = Path(run)
    if not (run / "index").is_dir():
        raise PiteError(f"{run}: not a run folder (no index/); give the out= folder of `pite annotate`")
    shards = list_done_shards(run)
    if workers <= 1 or len(shards) <= 1:
        parts = [shard_rows(run, s) for s in shards]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(partial(shard_rows, run), shards, chunksize=4))
    kept, rejects = RunRows(), RunRows()
    for part in parts:
        n_kept = part.reason.count("")
        for name in RunRows.__dataclass_fields__:
            getattr(kept, name).extend(getattr(part, name)[:n_kept])
            getattr(rejects, name).extend(getattr(part, name)[n_kept:])
    kept.extend(rejects)
    return kept
