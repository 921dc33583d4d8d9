"""The input pass before Ray: the manifest split into per-shard input files, streaming, resumable, with progress.

Per row it parses and checks the row (pipelines/manifest.py: no system call), appends it to its shard's file and an
8-byte hash of its video_id to OUT/input/.ids.u64. After each shard's file it records where it is
(OUT/input/.split.json: the source file and the rows read of it, the counts, what the check found), so a pass
killed at file 7,000 of 10,000 continues there. Duplicate video_ids are found at the end from the sorted hashes
(16 bytes a row at most, where a dict of ids held ~125), and the later rows' input files are rewritten with the
error. Whether the videos exist is checked on a sample (the first and a random thousand rows): the decode stage
names any other missing file as the row's reject.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

from annotate.storage import exists
from pipelines.files import write_atomic

STATE = ".split.json"
IDS = ".ids.u64"
FIRST_CHECKED = 1000  # rows whose video is checked for existence: the first ones ...
RANDOM_CHECKED = 1000  # ... and a uniform sample of the rest
PROGRESS_S = 10.0  # seconds between progress lines
SAVE_S = 5.0  # seconds between records of where the split is (taken when a shard's file is complete)
TOP_REASONS = 10


def id_hash(video_id: str) -> int:
    """64-bit hash of a video_id, never 0 (0 marks a row without an id)."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "little") or 1


class ManifestCheck:
    """What reading the manifest found: rows, rows already rejects (by reason), videos of the sampled rows missing."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.rows = state.get("rows", 0)
        self.errors: dict[str, int] = state.get("errors", {})  # reason class -> rows
        self.checked = state.get("checked", 0)  # rows whose video was looked for
        self.missing = state.get("missing", 0)
        self.first_missing = state.get("first_missing", "")
        self.sample: list[str] = state.get("sample", [])  # reservoir of video paths beyond the first rows
        self.candidates = state.get("candidates", 0)  # rows that could be sampled
        self.rng = random.Random(self.candidates)

    def to_state(self) -> dict:
        return {k: getattr(self, k) for k in ("rows", "errors", "checked", "missing", "first_missing", "sample",
                                              "candidates")}

    def add(self, r) -> None:
        self.rows += 1
        if r.error:
            self.add_error(r.error)
        elif not r.tar_member:
            self.candidates += 1
            if self.candidates <= FIRST_CHECKED:
                self._look(r.video)
            elif len(self.sample) < RANDOM_CHECKED:
                self.sample.append(r.video)
            else:  # reservoir sampling: each of the rest equally likely to be checked
                j = self.rng.randrange(self.candidates - FIRST_CHECKED)
                if j < RANDOM_CHECKED:
                    self.sample[j] = r.video

    def add_error(self, error: str, n: int = 1) -> None:
        reason = normalise(error)
        self.errors[reason] = self.errors.get(reason, 0) + n

    def finish(self) -> None:
        for video in self.sample:
            self._look(video)
        self.sample = []

    def _look(self, video: str) -> None:
        self.checked += 1
        if not exists(video):
            self.missing += 1
            self.first_missing = self.first_missing or video

    @property
    def exhaustive(self) -> bool:
        return self.checked >= self.candidates

    @property
    def usable(self) -> int:
        """Rows that can become samples, as far as the check can tell (all missing among those checked: none)."""
        ok = self.rows - sum(self.errors.values())
        if self.checked and self.missing == self.checked:
            return 0
        return ok - self.missing if self.exhaustive else ok

    def line(self) -> str:
        parts = [f"{self.rows} rows, {self.usable} to annotate"]
        if self.missing:
            where = "" if self.exhaustive else f" of the {self.checked} checked"
            parts.append(f"{self.missing} videos{where} not found (first: {self.first_missing}; paths are relative "
                         f"to the manifest's folder)")
        top = sorted(self.errors.items(), key=lambda kv: -kv[1])
        parts += [f"{n} x {reason}" for reason, n in top[:TOP_REASONS]]
        if len(top) > TOP_REASONS:
            parts.append(f"{sum(n for _, n in top[TOP_REASONS:])} rows of {len(top) - TOP_REASONS} other reasons")
        return "; ".join(parts)


def normalise(error: str) -> str:
    """A row's error as a reason shared by rows alike: no row or line numbers, no quoted ids, no JSON detail."""
    reason = error.split(" (first at row")[0].split(" {")[0]
    if reason.startswith("duplicate video_id"):
        return "duplicate video_id"
    reason = re.sub(r"^[^:]*\b(line|sample) [^:]*: ", "", reason)  # "<file> line 12: invalid JSON" -> the reason
    return re.sub(r"\d+", "N", reason)[:160]


class Progress:
    """A line every PROGRESS_S seconds while the split runs: rows, rows/s, the source file."""

    def __init__(self, files: int, rows: int):
        self.files, self.start_rows = files, rows
        self.t0 = self.last = time.perf_counter()

    def tick(self, rows: int, file_index: int) -> None:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_S:
            self.last = now
            rate = (rows - self.start_rows) / max(now - self.t0, 1e-9)
            print(f"annotate: split {rows:,} rows ({rate:,.0f} rows/s), file {file_index + 1} of {self.files}",
                  flush=True)


def split_manifest(cfg, out: Path, fingerprint: str, paths: list | None = None):
    """Split cfg.input (`paths`: its files, when known) into OUT/input/pite-NNNNNN.parquet; returns
    ({shard: rows}, rows, ManifestCheck)."""
    from pipelines.shards import input_file
    from pipelines.manifest import expand_inputs, iter_raw, validate_row

    folder = out / "input"
    folder.mkdir(parents=True, exist_ok=True)
    state = _load_state(folder, fingerprint, cfg.rows_per_shard)
    check, row = ManifestCheck(state["check"]), state["rows"]
    counts = {s: cfg.rows_per_shard for s in range(row // cfg.rows_per_shard)}  # whole shards, consecutive rows
    if row:
        print(f"annotate: split continues at row {row:,} (file {state['file'] + 1})", flush=True)
    paths = paths if paths is not None else expand_inputs(cfg.input)
    ids = open(folder / IDS, "r+b" if (folder / IDS).exists() else "wb")
    ids.truncate(row * 8)
    ids.seek(row * 8)
    writer = ShardFiles(cfg.rows_per_shard, lambda shard: input_file(out, shard))
    progress, file_index, in_file = Progress(len(paths), row), state["file"], state["skip"]
    saved = time.perf_counter()
    for i, base, raw in iter_raw(paths, state["file"], state["skip"]):
        if i != file_index:
            file_index, in_file = i, 0
        r = validate_row(row, raw, base)
        check.add(r)
        ids.write((id_hash(r.video_id) if not r.error else 0).to_bytes(8, "little"))
        row, in_file = row + 1, in_file + 1
        if writer.add(r.to_record()):
            counts[writer.last_shard] = writer.last_rows
            if time.perf_counter() - saved >= SAVE_S:
                ids.flush()
                _save_state(folder, fingerprint, cfg.rows_per_shard, row, file_index, in_file, check)
                saved = time.perf_counter()
        progress.tick(row, file_index)
    if writer.flush():
        counts[writer.last_shard] = writer.last_rows
    ids.close()
    mark_duplicates(folder, counts, cfg.rows_per_shard, check, lambda shard: input_file(out, shard))
    check.finish()
    return counts, row, check


class ShardFiles:
    """Rows in, one parquet file per `rows_per_shard` consecutive rows out (columns built as lists: fast)."""

    def __init__(self, rows_per_shard: int, path_of):
        import pyarrow as pa

        from pipelines.manifest import RECORD_SCHEMA_FIELDS

        self.rows_per_shard, self.path_of = rows_per_shard, path_of
        self.schema = pa.schema([(n, getattr(pa, t)()) for n, t in RECORD_SCHEMA_FIELDS])
        self.columns: dict[str, list] = {n: [] for n in self.schema.names}
        self.last_shard, self.last_rows = -1, 0

    def add(self, rec: dict) -> bool:
        """True when this row completed its shard's file."""
        for name, values in self.columns.items():
            values.append(rec[name])
        return len(self.columns["row"]) == self.rows_per_shard and self.flush()

    def flush(self) -> bool:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(self.columns["row"])
        if not n:
            return False
        shard = self.columns["row"][0] // self.rows_per_shard
        pq.write_table(pa.table(self.columns, schema=self.schema), self.path_of(shard))
        self.last_shard, self.last_rows = shard, n
        self.columns = {k: [] for k in self.columns}
        return True


def mark_duplicates(folder: Path, counts: dict, rows_per_shard: int, check: ManifestCheck, path_of) -> int:
    """Rows whose video_id an earlier row has: found from the sorted hashes, confirmed on the ids themselves, and
    written into their shard's input file as the row's error (the first one wins). Returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.manifest import duplicate_error

    hashes = np.fromfile(folder / IDS, dtype="<u8")
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    later = np.flatnonzero((ranked[1:] == ranked[:-1]) & (ranked[1:] != 0)) + 1
    if not len(later):
        return 0
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    first_of = order[starts[np.searchsorted(starts, later, side="right") - 1]]  # each run's first row
    marks: dict[int, list[tuple[int, int]]] = {}
    for dup, first in zip(order[later].tolist(), first_of.tolist()):
        marks.setdefault(dup // rows_per_shard, []).append((dup, first))
    ids = ShardIds(path_of, rows_per_shard)
    found = 0
    for shard, pairs in sorted(marks.items()):
        table = pq.read_table(path_of(shard))
        rows = table.to_pylist()
        for dup, first in pairs:
            rec = rows[dup - shard * rows_per_shard]
            if rec["error"] is None and ids.of(first) == rec["video_id"]:  # equal ids, not a hash collision
                rec["error"] = duplicate_error(rec["video_id"], first)
                check.add_error(rec["error"])
                found += 1
        # Whole or not at all: a kill mid-write must not leave a shard's input file torn.
        tmp = path_of(shard).with_name(f".{path_of(shard).name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp)
        os.replace(tmp, path_of(shard))
    return found


class ShardIds:
    """video_id of a row, reading each shard's id column once (the first rows of many duplicates share shards)."""

    def __init__(self, path_of, rows_per_shard: int):
        self.path_of, self.rows_per_shard = path_of, rows_per_shard
        self.cache: dict[int, list] = {}

    def of(self, row: int) -> str:
        import pyarrow.parquet as pq

        shard = row // self.rows_per_shard
        if shard not in self.cache:
            if len(self.cache) > 1024:  # bounded: duplicates come sorted by hash, so shards recur at random
                self.cache.clear()
            self.cache[shard] = pq.read_table(self.path_of(shard), columns=["video_id"]).column(0).to_pylist()
        return self.cache[shard][row - shard * self.rows_per_shard]


def _load_state(folder: Path, fingerprint: str, rows_per_shard: int) -> dict:
    fresh = {"rows": 0, "file": 0, "skip": 0, "check": None}
    path = folder / STATE
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
    except ValueError:
        return fresh
    if state.get("manifest") != fingerprint or state.get("rows_per_shard") != rows_per_shard:
        print("annotate: the split in progress was of another manifest or shard size: starting it again",
              file=sys.stderr)
        return fresh
    return state


def _save_state(folder: Path, fingerprint: str, rows_per_shard: int, rows: int, file_index: int, skip: int,
                check: ManifestCheck) -> None:
    """Where the split is: `rows` rows in whole shards' files, read up to row `skip` of source file `file`."""
    write_atomic(folder / STATE, json.dumps({
        "manifest": fingerprint, "rows_per_shard": rows_per_shard, "rows": rows, "file": file_index,
        "skip": skip, "check": check.to_state()}))
