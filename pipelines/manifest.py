"""Read an input manifest (docs/design.md, "Input manifest") row by row, never dying on a bad row.

Sources: JSONL, CSV or Parquet files, or video WebDataset shards as video2dataset writes them
(`DIR/{00000..00099}.tar`: members `mp4` + `txt` + `json`; the `.parquet` video2dataset writes beside each tar is
read instead of the tar's headers when it is there). Every source row comes out as a `ManifestRow` with its
manifest position; a row that cannot be parsed or breaks the contract carries `error` and becomes a reject
(stage "manifest") rather than stopping the job. Rows stream, and no row costs a system call: relative paths are
joined to the manifest's folder, resolved once per file. `iter_raw` can start inside a file (a split that
continues); `iter_manifest` adds the duplicate check, whose memory grows with the rows (the annotation job's split
keeps 8 bytes a row instead, pipelines/annotate/split.py).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import braceexpand

from annotate.errors import ConfigError
from annotate.storage import is_url, resolve_against

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "gif")
REQUIRED = ("video_id", "video", "caption")


@dataclass
class ManifestRow:
    row: int
    video_id: str = ""
    video: str = ""  # absolute path of the file (or of the tar holding it)
    caption: str = ""
    start: Optional[float] = None
    end: Optional[float] = None
    events: Optional[list] = None
    boxes: Optional[list] = None
    gt: Optional[str] = None
    tar_member: Optional[str] = None  # member name when the video lies inside a WebDataset tar
    error: Optional[str] = None  # why this row is a reject before any stage ran

    def to_record(self) -> dict[str, Any]:
        """Flat, Arrow-friendly: nested lists as JSON text (Arrow would otherwise infer clashing struct types)."""
        return {
            "row": self.row, "video_id": self.video_id, "video": self.video, "caption": self.caption,
            "start": self.start, "end": self.end,
            "events": None if self.events is None else json.dumps(self.events, ensure_ascii=False),
            "boxes": None if self.boxes is None else json.dumps(self.boxes, ensure_ascii=False),
            "gt": self.gt, "tar_member": self.tar_member, "error": self.error,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "ManifestRow":
        rec = dict(rec)
        for key in ("events", "boxes"):
            if rec.get(key) is not None:
                rec[key] = json.loads(rec[key])
        for key in ("start", "end"):
            if rec.get(key) is not None and isinstance(rec[key], float) and math.isnan(rec[key]):
                rec[key] = None
        return cls(**{k: rec.get(k) for k in cls.__dataclass_fields__})


RECORD_SCHEMA_FIELDS = [
    ("row", "int64"), ("video_id", "string"), ("video", "string"), ("caption", "string"), ("start", "float64"),
    ("end", "float64"), ("events", "string"), ("boxes", "string"), ("gt", "string"), ("tar_member", "string"),
    ("error", "string"),
]


def expand_inputs(spec: str) -> list[Path | str]:
    """A path, or a brace pattern of WebDataset tars (`data/{00000..00009}.tar`); a manifest at an s3:// or gs://
    URL stays a URL (str)."""
    if not spec:
        raise ConfigError("input: no manifest given (set input=MANIFEST.jsonl|csv|parquet or input=DIR/{0..9}.tar)")
    if is_url(spec):
        return _expand_urls(spec)
    paths = [Path(p) for p in braceexpand.braceexpand(spec)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"input: {missing[0]} not found{more}")
    return paths


def _expand_urls(spec: str) -> list[str]:
    from annotate.storage import check_url, exists

    check_url("input", spec)
    urls = list(braceexpand.braceexpand(spec))
    tars = [u for u in urls if u.lower().endswith(".tar")]
    if tars:
        # A member of a tar is found by reading the headers before it: one request each through a bucket's API.
        raise ConfigError(f"input: {tars[0]}: video2dataset tars are not read from object storage in place; mount "
                          f"the bucket read-only (mountpoint-s3, gcsfuse) and give the mounted path, or give a "
                          f"manifest whose videos are objects")
    try:
        missing = [u for u in urls if not exists(u)]
    except Exception as exc:  # noqa: BLE001 - endpoint, credentials, network: said in one line before any work
        from annotate.stage import one_line

        raise ConfigError(f"input: cannot read {urls[0]}: {one_line(exc)} (endpoint and credentials come from "
                          f"AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"input: {missing[0]} not found{more}")
    return urls


def duplicate_error(video_id: str, first_row: int) -> str:
    return f"duplicate video_id {video_id!r} (first at row {first_row})"


def iter_manifest(spec: str) -> Iterator[ManifestRow]:
    """All rows of the input in manifest order, numbered from 0, duplicates rejected (the first one wins)."""
    seen: dict[str, int] = {}
    for row, (_, base, raw) in enumerate(iter_raw(expand_inputs(spec))):
        item = validate_row(row, raw, base)
        if item.error is None:
            if item.video_id in seen:
                item.error = duplicate_error(item.video_id, seen[item.video_id])
            else:
                seen[item.video_id] = row
        yield item


def iter_raw(paths: list[Path | str], start_file: int = 0,
             skip: int = 0) -> Iterator[tuple[int, str, dict | str]]:
    """(file index, the file's folder as an absolute path or URL, raw row) from file `start_file` on, its first
    `skip` rows passed over (cheaply where the format allows: a JSONL line is not parsed)."""
    from annotate.storage import parent

    for i in range(start_file, len(paths)):
        # once per file: rows join to it without a system call
        base = parent(paths[i]) if isinstance(paths[i], str) else str(paths[i].parent.resolve())
        for raw in _iter_source(paths[i], skip if i == start_file else 0):
            yield i, base, raw


def _open_text(path: Path | str, **kwargs):
    """A local file, or an object read as a stream (fsspec), as a text file."""
    if isinstance(path, str):
        import fsspec

        return fsspec.open(path, "rt", encoding="utf-8", errors="replace", **kwargs).open()
    return open(path, encoding="utf-8", errors="replace", **kwargs)


def _iter_source(path: Path | str, skip: int = 0) -> Iterator[dict | str]:
    """Raw rows: a dict, or a string saying why the row could not be read at all; the first `skip` passed over."""
    suffix = Path(str(path)).suffix.lower()
    name = str(path).rsplit("/", 1)[-1]
    if suffix in (".jsonl", ".json", ".ndjson"):
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if skip:
                    skip -= 1
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{name} line {lineno}: invalid JSON ({exc.msg})"
                    continue
                yield obj if isinstance(obj, dict) else f"{name} line {lineno}: expected a JSON object"
    elif suffix == ".csv":
        with _open_text(path, newline="") as f:
            for n, rec in enumerate(csv.DictReader(f)):
                if n >= skip:
                    yield {k: _csv_value(k, v) for k, v in rec.items() if k is not None}
    elif suffix == ".parquet":
        yield from _iter_parquet(path, skip)
    elif suffix == ".tar":
        sidecar = path.with_suffix(".parquet")
        rows = _iter_wds_sidecar(path, sidecar) if sidecar.is_file() else _iter_wds(path)
        for n, raw in enumerate(rows):
            if n >= skip:
                yield raw
    else:
        raise ConfigError(f"input: {path} has an unknown format (expected .jsonl, .csv, .parquet or .tar)")


def _iter_parquet(path: Path | str, skip: int = 0) -> Iterator[dict]:
    import pyarrow.parquet as pq

    if isinstance(path, str):
        import fsspec

        with fsspec.open(path, "rb") as f:
            yield from _parquet_rows(pq.ParquetFile(f), skip)
        return
    yield from _parquet_rows(pq.ParquetFile(path), skip)


def _parquet_rows(pf, skip: int) -> Iterator[dict]:
    for batch in pf.iter_batches(batch_size=1024):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield from batch.slice(skip).to_pylist()
        skip = 0


def _iter_wds_sidecar(path: Path, sidecar: Path) -> Iterator[dict | str]:
    """A video2dataset tar's rows from the `.parquet` it writes beside it (one row per attempted sample, `status`
    success for those in the tar, the json member's fields as columns): no tar header is read. The video member is
    `<key>.mp4`, video2dataset's default encoding; the decode stage rejects a row whose member is not there."""
    tar = str(path.resolve())
    for raw in _iter_parquet(sidecar):
        if raw.get("status", "success") != "success" or raw.get("key") is None:
            continue
        key = str(raw["key"])
        row = {k: raw[k] for k in ("start", "end", "events", "boxes", "gt") if raw.get(k) is not None}
        row.update(video_id=key, video=tar, tar_member=f"{key}.mp4", caption=raw.get("caption"))
        yield row


def _csv_value(key: str, value: Optional[str]):
    if value is None or value == "":
        return None
    if key in ("events", "boxes"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # validate_row says it is not a list
    return value


def _iter_wds(path: Path) -> Iterator[dict | str]:
    """video2dataset shards without their parquet: members grouped by key (the name before the first dot), in tar
    order.

    A tar that breaks off (a truncated download) gives the samples before the break, then one row saying where it
    broke: the rest of that shard cannot be read, and the job goes on with the next one.
    """
    try:
        tar = tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        yield f"{path.name}: not a readable tar ({exc})"
        return
    with tar:
        group: dict[str, Any] = {}
        key = None
        resolved = str(path.resolve())  # once per tar, not per sample
        members = iter(tar)
        while True:
            try:
                member = next(members, None)
                if member is None:
                    break
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                k, _, ext = base.partition(".")
                if key is not None and k != key:
                    yield _wds_row(path, resolved, key, group)
                    group = {}
                key = k
                ext = ext.lower()
                if ext in VIDEO_EXTS:
                    group["__video__"] = member.name
                elif ext in ("txt", "json"):
                    group[ext] = tar.extractfile(member).read().decode("utf-8", errors="replace")
            except (tarfile.TarError, OSError, EOFError) as exc:
                where = f"after sample {key}" if key is not None else "at its start"
                yield f"{path.name}: unreadable {where} ({exc}); the rest of this tar is skipped"
                return
        if key is not None:
            yield _wds_row(path, resolved, key, group)


def _wds_row(path: Path, resolved: str, key: str, group: dict) -> dict | str:
    meta: dict = {}
    if "json" in group:
        try:
            meta = json.loads(group["json"])
        except json.JSONDecodeError as exc:
            return f"{path.name} sample {key}: invalid json member ({exc.msg})"
        if not isinstance(meta, dict):
            return f"{path.name} sample {key}: json member is not an object"
    if "__video__" not in group:
        return f"{path.name} sample {key}: no video member ({'/'.join(VIDEO_EXTS)})"
    row = {k: meta[k] for k in ("start", "end", "events", "boxes", "gt") if k in meta}
    row.update(video_id=key, video=resolved, tar_member=group["__video__"],
               caption=group.get("txt", meta.get("caption")))
    return row


def validate_row(row: int, raw: dict | str, base: str) -> ManifestRow:
    """A raw row as a ManifestRow numbered `row`; relative paths joined to `base` (absolute) without a system
    call; what breaks the contract in `error`."""
    if isinstance(raw, str):
        return ManifestRow(row=row, error=raw)
    item = ManifestRow(row=row, video_id=str(raw.get("video_id") or ""))
    missing = [key for key in REQUIRED if raw.get(key) is None]
    if missing:
        item.error = missing_columns(missing, raw)
        return item
    for key in REQUIRED:
        if not isinstance(raw[key], str):
            item.error = f"column {key!r} must be a string, got {type(raw[key]).__name__}"
            return item
    if not raw["video_id"].strip():
        item.error = "empty video_id"
        return item
    item.caption = raw["caption"]
    video = raw["video"]
    item.tar_member = raw.get("tar_member")
    item.video = video if item.tar_member else resolve_against(base, video)
    try:
        for key in ("start", "end"):
            value = raw.get(key)
            if value is not None:
                value = float(value)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{key} must be a finite number >= 0")
                setattr(item, key, value)
        if item.start is not None and item.end is not None and item.end <= item.start:
            raise ValueError(f"end ({item.end}) must be after start ({item.start})")
        item.events = _check_list(raw.get("events"), "events", {"start": float, "end": float, "text": str})
        item.boxes = _check_list(raw.get("boxes"), "boxes", {"phrase": str, "frame": _frame_index, "box": list})
        if item.boxes is not None:
            for b in item.boxes:
                if len(b["box"]) != 4:
                    raise ValueError("boxes: box must be [x0, y0, x1, y1]")
        gt = raw.get("gt")
        if gt is not None:
            item.gt = resolve_against(base, gt)
    except (ValueError, TypeError) as exc:
        item.error = str(exc)
    return item


def missing_columns(missing: list[str], raw: dict) -> str:
    """All the required columns a row lacks in one message, with the columns it has (a misnamed `id` or `path`
    is then seen at once)."""
    names = ", ".join(repr(k) for k in missing)
    found = ", ".join(repr(k) for k in raw if raw[k] is not None) or "none"
    plural = "s" if len(missing) > 1 else ""
    return f"missing required column{plural} {names} (the row has {found}; required: {', '.join(REQUIRED)})"


def _frame_index(value) -> int:
    """A source frame index: an integer (1.0 is accepted, 1.5 is not)."""
    if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 0:
        raise ValueError("not a frame index")
    return int(float(value))


def _check_list(value, name: str, fields: dict[str, type]) -> Optional[list]:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of objects")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ValueError(f"{name}[{i}] must be an object")
        clean = dict(entry)
        for key, typ in fields.items():
            if key not in entry:
                raise ValueError(f"{name}[{i}] lacks {key!r}")
            try:
                clean[key] = typ(entry[key]) if typ is not list else list(entry[key])
            except (TypeError, ValueError):
                kind = "a frame index (integer >= 0)" if typ is _frame_index else typ.__name__
                raise ValueError(f"{name}[{i}].{key} must be {kind}") from None
        out.append(clean)
    return out

