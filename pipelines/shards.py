"""The run layout on disk (docs/design.md, "Run layout"): shard tars, per-shard index and rejects parquet, resume helpers.

A shard `i` is three files, `shards/pite-%06d.tar`, `index/pite-%06d.parquet` and `rejects/pite-%06d.parquet`.
`ShardWriter` writes them under hidden temporary names (`.pite-000007.tar.<pid>-<rand>.tmp`: no final glob and
no pyarrow dataset ever sees them) and renames them on commit, the index last, so "the three files exist" means
"the shard is complete", and the catalogue (`index/`) never lists a sample whose tar is not in place.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import re
import secrets
import tarfile
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from annotate.errors import SchemaError
from annotate.schema import MEMBERS, Sample, sanitize_key, validate_sample

SUBDIRS = {"tar": ("shards", ".tar"), "index": ("index", ".parquet"), "rejects": ("rejects", ".parquet")}
FINAL_NAME = re.compile(r"pite-(\d{6,})\.(?:tar|parquet)")
_TEMP_GLOB = ".pite-*.tmp"

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("video_id", pa.string()),
        ("caption", pa.string()),
        ("n_objects", pa.int32()),
        ("confidence", pa.list_(pa.float64())),  # each object's confidence (null for a sample made without one)
        ("n_frames", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("duration", pa.float64()),
        ("shard", pa.string()),  # the tar's file name inside shards/, e.g. "pite-000007.tar"
    ]
)
# Quality figures (when ground truth exists) are float64 columns after these. Every shard of a run declares the
# same ones, null where a sample has no ground truth, so all index files share one schema.
QUALITY_COLUMNS: tuple[str, ...] = ("ground_recall", "box_iou", "mask_iou", "delta_avg", "oa", "aj")
REJECTS_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("row", pa.int64()), ("stage", pa.string()), ("error", pa.string())]
)


def index_schema(quality_columns: Sequence[str] = QUALITY_COLUMNS) -> pa.Schema:
    clash = set(quality_columns) & set(INDEX_SCHEMA.names)
    if clash:
        raise SchemaError(f"quality columns {sorted(clash)} clash with the index's own columns")
    return pa.schema(list(INDEX_SCHEMA) + [pa.field(c, pa.float64()) for c in quality_columns])


def shard_name(i: int) -> str:
    return f"pite-{i:06d}"


def shard_paths(out_dir: str | os.PathLike, i: int) -> dict[str, Path]:
    """{"tar": OUT/shards/pite-i.tar, "index": OUT/index/pite-i.parquet, "rejects": OUT/rejects/pite-i.parquet}"""
    out = Path(out_dir)
    return {kind: out / sub / f"{shard_name(i)}{ext}" for kind, (sub, ext) in SUBDIRS.items()}


def input_file(out_dir: str | os.PathLike, shard: int) -> Path:
    """OUT/input/pite-i.parquet: the input rows of shard i, as the job's split wrote them."""
    return Path(out_dir) / "input" / f"{shard_name(shard)}.parquet"


def shard_done(out_dir: str | os.PathLike, i: int) -> bool:
    return all(p.is_file() for p in shard_paths(out_dir, i).values())


def _final_shard_ids(out_dir: str | os.PathLike) -> set[int]:
    """Shard numbers that have at least one final (non-temporary) file."""
    found = set()
    for sub, ext in SUBDIRS.values():
        folder = Path(out_dir) / sub
        if folder.is_dir():
            for p in folder.glob(f"pite-*{ext}"):
                m = FINAL_NAME.fullmatch(p.name)
                if m:
                    found.add(int(m.group(1)))
    return found


def list_done_shards(out_dir: str | os.PathLike) -> list[int]:
    return sorted(i for i in _final_shard_ids(out_dir) if shard_done(out_dir, i))


def list_partial_shards(out_dir: str | os.PathLike) -> list[int]:
    """Shards with some but not all of their three files (a crash between renames, or a file deleted by hand)."""
    return sorted(i for i in _final_shard_ids(out_dir) if not shard_done(out_dir, i))


def remove_partial(out_dir: str | os.PathLike) -> list[Path]:
    """Before resuming: delete temporary files and the files of incomplete shards; returns what it removed."""
    removed = []
    for sub, _ in SUBDIRS.values():
        folder = Path(out_dir) / sub
        if folder.is_dir():
            for p in sorted(folder.glob(_TEMP_GLOB)):
                p.unlink(missing_ok=True)
                removed.append(p)
    for i in list_partial_shards(out_dir):
        for p in shard_paths(out_dir, i).values():
            if p.exists():
                p.unlink()
                removed.append(p)
    return removed


# --- writing ----------------------------------------------------------------------------------------------------


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A member header that depends only on name and size, so equal samples give byte-equal tars."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable; directories cannot be opened this way on every OS, hence the guard.
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ShardWriter:
    """Write shard `i` of a run: `add` samples and `reject` rows in input order, then `commit` (or `abort`).

    As a context manager it commits on a clean exit and aborts (leaving nothing visible) on an exception.

    We write the tar with the standard library rather than webdataset's TarWriter: TarWriter stamps each member
    with `time.time()` unless given an mtime, names its owner "bigdata" and orders members by sorted suffix;
    here every header field is fixed (mtime 0, uid/gid 0, no user/group names, mode 0644, PAX format) and members
    go in the order `Sample.to_members` gives, so the same samples give the same bytes.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_index: int,
        *,
        quality_columns: Sequence[str] = QUALITY_COLUMNS,
        validate: bool = True,
        num_frames: Optional[int] = None,
        num_points: Optional[int] = None,
    ):
        self.shard_index = shard_index
        self.name = shard_name(shard_index)
        self.paths = shard_paths(out_dir, shard_index)
        self.quality_columns = tuple(quality_columns)
        self.schema = index_schema(self.quality_columns)
        self.validate = validate
        self.num_frames, self.num_points = num_frames, num_points
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.temp = {k: p.with_name(f".{p.name}.{token}.tmp") for k, p in self.paths.items()}
        for p in self.paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict] = []
        self._rejects: list[dict] = []
        self._keys: set[str] = set()
        self._file = open(self.temp["tar"], "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.state = "open"

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def add(self, sample: Sample, quality: Optional[Mapping[str, Optional[float]]] = None) -> str:
        """Append one sample (validated first unless `validate=False`); returns its key.

        Raises SchemaError for an invalid sample, a key already in this shard or an undeclared quality figure;
        nothing is written then, so the caller can turn the row into a reject and go on.
        """
        self._check_open()
        if self.validate:
            validate_sample(sample, num_frames=self.num_frames, num_points=self.num_points)
        return self._append(sample.key, sample.meta, sample.to_members(), quality)

    def add_members(self, members: Mapping[str, bytes],
                    quality: Optional[Mapping[str, Optional[float]]] = None) -> str:
        """Append a sample given as its member bytes, written as they are (the annotation job's actors built and
        validated them); only the `json` member is read, for the index row. Same errors as `add`."""
        self._check_open()
        try:
            meta = json.loads(members["json"])
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SchemaError(f"sample: json member missing or unreadable ({exc})") from exc
        if not isinstance(meta, dict) or set(members) != set(MEMBERS):
            raise SchemaError(f"sample: expected members {list(MEMBERS)} with a json object, got {sorted(members)}")
        return self._append(sanitize_key(meta.get("video_id")), meta, {m: members[m] for m in MEMBERS}, quality)

    def _append(self, key: str, meta: Mapping, members: Mapping[str, bytes],
                quality: Optional[Mapping[str, Optional[float]]]) -> str:
        if key in self._keys:
            raise SchemaError(f"sample {key!r}: key already in shard {self.name} (video_id {meta['video_id']!r})")
        quality = dict(quality or {})
        unknown = sorted(set(quality) - set(self.quality_columns))
        if unknown:
            declared = self.quality_columns
            raise SchemaError(f"sample {key!r}: quality {unknown} not among the declared columns {declared}")
        row = {
            "key": key,
            "video_id": meta["video_id"],
            "caption": meta["caption"],
            "n_objects": len(meta["objects"]),
            "confidence": [o.get("confidence") for o in meta["objects"]],
            "n_frames": len(meta["frame_indices"]),
            "width": meta["width"],
            "height": meta["height"],
            "duration": meta["duration"],
            "shard": self.paths["tar"].name,
        }
        for col in self.quality_columns:
            value = quality.get(col)
            if value is not None and not isinstance(value, numbers.Real):
                raise SchemaError(f"sample {key!r}: quality {col}: expected a number, got {value!r}")
            # An undefined figure (no visible ground-truth point: NaN) is stored as null, so means skip it.
            row[col] = None if value is None or not math.isfinite(value) else float(value)
        for suffix, data in members.items():
            self._tar.addfile(_tarinfo(f"{key}.{suffix}", len(data)), io.BytesIO(data))
        self._keys.add(key)
        self._rows.append(row)
        return key

    def reject(self, video_id: str, row: int, stage: str, error: str) -> None:
        self._check_open()
        self._rejects.append({"video_id": str(video_id), "row": int(row), "stage": str(stage), "error": str(error)})

    @property
    def index_rows(self) -> list[dict]:
        """The index rows of the samples added so far (key, caption, n_objects, confidence, ...)."""
        return list(self._rows)

    @property
    def n_samples(self) -> int:
        return len(self._rows)

    @property
    def n_rejects(self) -> int:
        return len(self._rejects)

    def commit(self) -> dict[str, Path]:
        """Finish the three temporary files, then rename them into place: tar, rejects, index last."""
        self._check_open()
        renamed: list[Path] = []
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            pq.write_table(pa.Table.from_pylist(self._rows, schema=self.schema), self.temp["index"])
            pq.write_table(pa.Table.from_pylist(self._rejects, schema=REJECTS_SCHEMA), self.temp["rejects"])
            for kind in ("index", "rejects"):
                _fsync_file(self.temp[kind])
            for kind in ("tar", "rejects", "index"):
                os.replace(self.temp[kind], self.paths[kind])
                renamed.append(self.paths[kind])
            for folder in {p.parent for p in self.paths.values()}:
                _fsync_dir(folder)
        except BaseException:
            # Leave no shard that looks half done: drop what was already renamed along with the temp files.
            for p in renamed:
                p.unlink(missing_ok=True)
            self.abort()
            raise
        self.state = "committed"
        return dict(self.paths)

    def abort(self) -> None:
        """Drop the temporary files; safe to call twice, and after a failed commit."""
        if self.state == "committed":
            return
        try:
            self._tar.close()
        except (OSError, tarfile.TarError, ValueError):
            pass  # the file is deleted below anyway
        self._file.close()
        for p in self.temp.values():
            p.unlink(missing_ok=True)
        self.state = "aborted"

    def _check_open(self) -> None:
        if self.state != "open":
            raise RuntimeError(f"shard writer {self.name} is {self.state}")


# --- reading ----------------------------------------------------------------------------------------------------


def iter_members(tar_path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) per sample, in tar order; key = member name before its first dot, as WebDataset.

    Streams the tar (mode "r|") so a shard is never held in memory whole. A malformed tar, a member name with no
    dot, a suffix twice or a key whose members are not adjacent is a SchemaError naming the tar.
    """
    key, members, seen = None, {}, set()
    try:
        with open(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
            for info in tf:
                if not info.isreg():
                    continue
                base, dot, suffix = info.name.partition(".")
                if not dot:
                    raise SchemaError(f"{tar_path}: member {info.name!r} has no '.suffix'")
                if base != key:
                    if key is not None:
                        yield key, members
                    if base in seen:
                        raise SchemaError(f"{tar_path}: key {base!r} appears twice")
                    key, members = base, {}
                    seen.add(base)
                if suffix in members:
                    raise SchemaError(f"{tar_path}: member {info.name!r} appears twice")
                members[suffix] = tf.extractfile(info).read()
    except (tarfile.TarError, EOFError) as exc:
        raise SchemaError(f"{tar_path}: unreadable tar ({exc})") from exc
    if key is not None:
        yield key, members


def iter_samples(tar_path: str | os.PathLike) -> Iterator[Sample]:
    """The samples of one shard tar; a sample whose members or key are wrong is a SchemaError naming the tar."""
    for key, members in iter_members(tar_path):
        try:
            sample = Sample.from_members(members, key)
        except SchemaError as exc:
            raise SchemaError(f"{tar_path}: {exc}") from exc
        if sample.key != key:
            vid = sample.meta.get("video_id")
            raise SchemaError(f"{tar_path}: sample {key!r}: json: video_id {vid!r} has key {sample.key!r}")
        yield sample


def _open_parquet_dir(run_dir: str | os.PathLike, kind: str, base: pa.Schema) -> ds.Dataset:
    # Only committed shards: a file left by an interrupted run (or a shard with a file deleted) is not listed.
    files = [str(shard_paths(run_dir, i)[kind]) for i in list_done_shards(run_dir)]
    folder = Path(run_dir) / SUBDIRS[kind][0]
    try:
        # Unify the schemas of all files (not just the first's, pyarrow's default), so a column only some
        # shards have (quality figures of a run written by another version) is still visible, null elsewhere.
        schema = pa.unify_schemas([base] + [pq.read_schema(f) for f in files])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{folder}: parquet files disagree on column types ({exc})") from exc
    return ds.dataset(files, schema=schema, format="parquet")


def open_index(run_dir: str | os.PathLike) -> ds.Dataset:
    """The run's catalogue: one row per sample of every committed shard (INDEX_SCHEMA + quality columns).

    Same rows as `pyarrow.dataset.dataset(run_dir + "/index")` on a run that was not interrupted; this one also
    skips the files of incomplete shards and sees every shard's columns, not only the first file's.
    """
    return _open_parquet_dir(run_dir, "index", INDEX_SCHEMA)


def open_rejects(run_dir: str | os.PathLike) -> ds.Dataset:
    """One row per rejected input row of every committed shard: video_id, row, stage, error."""
    return _open_parquet_dir(run_dir, "rejects", REJECTS_SCHEMA)
