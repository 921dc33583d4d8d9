"""The static site of a run: the table's data, the chosen samples' pages and the page code, in one folder.

    DIR/index.html, sample.html, static/          the page code (copied from pipelines/browse/static)
    DIR/data/columns.js                           the columns every row is filtered and sorted on, as typed arrays
    DIR/data/rows/NNNNNN.js                       key, caption, shard, reject message of CHUNK rows, loaded when shown
    DIR/samples/<shard>/<key>.(js|jpg)            a sample's page data and its frame sheet

Data files are scripts (`PITE.put(name, value)`), not JSON fetched by the page, so the site also opens from
file:// where browsers refuse fetch(). Pages already in DIR are kept, so a second call adds pages to the site.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from annotate.errors import PiteError
from pipelines.browse.pages import PER_TASK, b64, data_script, write_pages
from pipelines.browse.rows import RunRows, read_rows
from pipelines.files import write_atomic
from pipelines.shards import SUBDIRS

STATIC = Path(__file__).with_name("static")
CHUNK = 500  # rows per row file: a table page of 50 rows needs one or two of them


@dataclass
class Choice:
    """Which kept samples get a page."""

    pages: int = 500  # at most this many, spread over the confidence range when more match
    where: Optional[str] = None  # a DuckDB condition over the index's columns
    keys: Sequence[str] = ()  # exactly these (plus what `where` picks)


def where_keys(run: Path, where: str) -> set[str]:
    """Keys of the index rows that satisfy a DuckDB condition, e.g. "list_min(confidence) < 0.5"."""
    import duckdb

    query = f"SELECT key FROM read_parquet('{run}/index/*.parquet', union_by_name=true) WHERE {where}"
    try:
        return {r[0] for r in duckdb.sql(query).fetchall()}
    except duckdb.Error as exc:
        raise PiteError(f"--where {where!r}: {str(exc).splitlines()[0]}") from exc


def choose(rows: RunRows, run: Path, choice: Choice) -> list[int]:
    """Row numbers of the kept samples that get a page: the named keys, then what `where` picks (all kept rows
    when neither is given) capped at `pages`, evenly spaced in order of least confidence so both ends show."""
    kept = [i for i, r in enumerate(rows.reason) if r == ""]
    by_key = {rows.key[i]: i for i in kept}
    unknown = [k for k in choice.keys if k not in by_key]
    if unknown:
        raise PiteError(f"{run}: no kept sample with key {unknown[0]!r} ({len(unknown)} unknown)")
    named = [by_key[k] for k in choice.keys]
    pool = kept
    if choice.where:
        picked = where_keys(run, choice.where)
        pool = [i for i in kept if rows.key[i] in picked]
    elif choice.keys:
        pool = []
    pool = sorted(pool, key=lambda i: (math.isnan(rows.confidence[i]), rows.confidence[i], rows.key[i]))
    if len(pool) > choice.pages:
        pool = [pool[j] for j in np.unique(np.round(np.linspace(0, len(pool) - 1, choice.pages)).astype(int))]
    return sorted(set(named) | set(pool))


def write_columns(rows: RunRows, out: Path, has_page: np.ndarray, run_info: dict) -> None:
    """data/columns.js and data/rows/*.js."""
    vocab: dict[str, int] = {}
    offsets, ids = [0], []
    for phrases in rows.phrases:
        ids += [vocab.setdefault(p.lower(), len(vocab)) for p in phrases]
        offsets.append(len(ids))
    reasons = sorted({r for r in rows.reason if r})
    code = {r: i + 1 for i, r in enumerate(reasons)}
    columns = {
        "n": len(rows), "chunk": CHUNK, "run": run_info, "phrases": list(vocab), "reasons": reasons,
        "confidence": b64(np.asarray(rows.confidence, np.float32), "<f4"),
        "duration": b64(np.asarray(rows.duration, np.float32), "<f4"),
        "objects": b64(np.asarray(rows.objects), "<u2"),
        "reason": b64(np.asarray([code.get(r, 0) for r in rows.reason]), "<u2"),
        "page": b64(has_page, "u1"),
        "phrase_offsets": b64(np.asarray(offsets), "<u4"),
        "phrase_ids": b64(np.asarray(ids, dtype=np.int64), "<u4"),
    }
    data = out / "data"
    (data / "rows").mkdir(parents=True, exist_ok=True)
    for start in range(0, len(rows), CHUNK):
        chunk = [[rows.key[i], rows.shard[i], rows.caption[i], rows.message[i]]
                 for i in range(start, min(len(rows), start + CHUNK))]
        write_atomic(data / "rows" / f"{start // CHUNK:06d}.js", data_script(f"rows/{start // CHUNK}", chunk))
    write_atomic(data / "columns.js", data_script("columns", columns))


def build_site(run: str | Path, out: str | Path, choice: Choice = Choice(), *, max_frames: int = 100,
               max_side: int = 320, workers: int = 1) -> dict:
    """Write the site of a run into `out`; returns a summary (rows, kept, rejects, pages, pages without frames)."""
    t0 = time.perf_counter()
    run, out = Path(run), Path(out)
    rows = read_rows(run, workers)
    chosen = choose(rows, run, choice)
    out.mkdir(parents=True, exist_ok=True)
    tasks = page_tasks(rows, run, chosen, out, max_frames, max_side)
    done = write_pages(tasks, workers)
    pages = {(d.name, f.name) for d in (out / "samples").iterdir() if d.is_dir() for f in os.scandir(d)} \
        if (out / "samples").is_dir() else set()
    has_page = np.array([r == "" and (s, f"{k}.js") in pages for k, s, r in zip(rows.key, rows.shard, rows.reason)],
                        dtype=np.uint8)
    kept = rows.reason.count("")
    run_info = {"name": run.resolve().name, "kept": kept, "rejects": len(rows) - kept}
    write_columns(rows, out, has_page, run_info)
    for name in ("index.html", "sample.html"):
        shutil.copyfile(STATIC / name, out / name)
    shutil.copytree(STATIC, out / "static", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.html"))
    return {"site": str(out / "index.html"), "rows": len(rows), "kept": kept, "rejects": len(rows) - kept,
            "pages_written": len(done), "pages": int(has_page.sum()),
            "pages_without_frames": sum(1 for _, note in done if note),
            "first_frames_note": next((note for _, note in done if note), ""),
            "seconds": round(time.perf_counter() - t0, 2)}


def page_tasks(rows: RunRows, run: Path, chosen: list[int], out: Path, max_frames: int,
               max_side: int) -> list[tuple]:
    """pages.build_pages tasks: per shard, PER_TASK chosen samples each, with their videos."""
    tar_dir, tar_ext = SUBDIRS["tar"]
    by_shard: dict[str, list[int]] = {}
    for i in chosen:
        by_shard.setdefault(rows.shard[i], []).append(i)
    videos = videos_of(run, {rows.video_id[i] for i in chosen})
    return [(run / tar_dir / f"{shard}{tar_ext}", shard,
             {rows.key[i]: videos.get(rows.video_id[i]) for i in idx[j:j + PER_TASK]}, str(out), max_frames, max_side)
            for shard, idx in sorted(by_shard.items()) for j in range(0, len(idx), PER_TASK)]


def videos_of(run: Path, video_ids: set[str]) -> dict[str, str]:
    """video_id -> its video path, from the run's input/*.parquet (absent when it was read from a video tar)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = sorted((run / "input").glob("pite-*.parquet"))
    if not files or not video_ids:
        return {}
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(
        columns=["video_id", "video", "tar_member"], filter=pc.field("video_id").isin(sorted(video_ids)))
    return {vid: video for vid, video, member in zip(*(table[c].to_pylist() for c in ("video_id", "video",
                                                                                    "tar_member"))) if not member}
