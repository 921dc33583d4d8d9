"""`pite inspect RUN_DIR [--validate] [--json]`: what a run holds, from its index/ and rejects/ catalogues.

Without `--validate` only parquet is read (fast at any size). `--validate` reads every committed shard, checks
every sample against the schema and against its index row, and exits 1 with one line per bad sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pipelines.progress import job_bar

from annotate.errors import PiteError, SchemaError
from annotate.schema import Sample, validate_sample
from pipelines.shards import (
    INDEX_SCHEMA,
    iter_members,
    list_done_shards,
    list_partial_shards,
    open_index,
    open_rejects,
    shard_paths,
)

HIST_MAX = 10  # objects-per-sample histogram: one bin per count below this, then "10+"
TOP_REASONS = 3
CONFIDENCE_BINS = 10


def _range(col: pa.ChunkedArray) -> Optional[dict]:
    if len(col) == col.null_count:
        return None
    mm = pc.min_max(col)
    return {"mean": pc.mean(col).as_py(), "min": mm["min"].as_py(), "max": mm["max"].as_py()}


def _objects_histogram(col: pa.ChunkedArray) -> dict[str, int]:
    counts = Counter()
    for n, c in zip(*(v.to_pylist() for v in pc.value_counts(col).flatten())):
        counts[str(n) if n < HIST_MAX else f"{HIST_MAX}+"] += c
    order = [str(i) for i in range(HIST_MAX)] + [f"{HIST_MAX}+"]
    return {k: counts[k] for k in order if counts[k]}


def _confidence_histogram(values: pa.Array) -> dict[str, int]:
    """Objects per confidence bin of 0.1 ("0.0-0.1" ... "0.9-1.0")."""
    counts = Counter(min(int(v * CONFIDENCE_BINS), CONFIDENCE_BINS - 1) for v in values.to_pylist())
    return {f"{b / CONFIDENCE_BINS:.1f}-{(b + 1) / CONFIDENCE_BINS:.1f}": counts[b] for b in range(CONFIDENCE_BINS)}


def _rejects_summary(table: pa.Table) -> dict:
    by_stage: dict[str, dict] = {}
    if table.num_rows:
        grouped = table.group_by(["stage", "error"]).aggregate([("row", "count")]).to_pylist()
        for g in sorted(grouped, key=lambda g: (-g["row_count"], g["stage"], g["error"])):
            entry = by_stage.setdefault(g["stage"], {"count": 0, "top_reasons": []})
            entry["count"] += g["row_count"]
            if len(entry["top_reasons"]) < TOP_REASONS:
                entry["top_reasons"].append({"error": g["error"], "count": g["row_count"]})
    return {"total": table.num_rows, "by_stage": dict(sorted(by_stage.items(), key=lambda kv: -kv[1]["count"]))}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numeric_leaves(obj: dict, skip=("config", "versions")) -> dict[str, float]:
    """stats.json counts and seconds, flattened one level deep ("rejected.decode": 3)."""
    out = {}
    for k, v in obj.items():
        if k in skip:
            continue
        if _is_number(v):
            out[k] = v
        elif isinstance(v, dict):
            out.update({f"{k}.{k2}": v2 for k2, v2 in v.items() if _is_number(v2)})
    return out


def summarize(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    index = open_index(run).to_table()
    rejects = open_rejects(run).to_table()
    summary: dict = {
        "run": str(run),
        "samples": index.num_rows,
        "shards": len(list_done_shards(run)),
        "incomplete_shards": list_partial_shards(run),
    }
    if index.num_rows:
        captions = index["caption"]
        n_objects = index["n_objects"]
        summary["objects_per_sample"] = _range(n_objects) | {"histogram": _objects_histogram(n_objects)}
        if "confidence" in index.column_names:
            values = pc.drop_null(pc.list_flatten(index["confidence"]))
            if len(values):
                summary["confidence"] = _range(values) | {"histogram": _confidence_histogram(values)}
        summary["caption_chars"] = _range(pc.utf8_length(captions))
        summary["caption_words"] = _range(pc.list_value_length(pc.utf8_split_whitespace(captions)))
        summary["frames"] = _range(index["n_frames"])
        summary["duration_s"] = _range(index["duration"])
        quality = {}
        for name in index.column_names:
            col = index[name]
            if name not in INDEX_SCHEMA.names and pa.types.is_floating(col.type) and col.null_count < len(col):
                quality[name] = {"mean": pc.mean(col).as_py(), "n": len(col) - col.null_count}
        if quality:
            summary["quality"] = quality
    summary["rejects"] = _rejects_summary(rejects)
    stats_path = run / "stats.json"
    if stats_path.is_file():
        try:
            stats = json.loads(stats_path.read_text())
        except json.JSONDecodeError as exc:
            summary["stats"] = {"error": f"{stats_path}: not valid JSON ({exc})"}
        else:
            summary["stats"] = _numeric_leaves(stats) if isinstance(stats, dict) else {}
    return summary


def validate_run(
    run_dir: str | Path, *, num_frames: Optional[int] = None, num_points: Optional[int] = None, progress: bool = True
) -> tuple[int, list[str]]:
    """Read every committed shard; returns (samples read, one line per problem)."""
    run = Path(run_dir)
    checked, problems = 0, []
    first_seen: dict[str, str] = {}  # key -> tar name, to catch a key in two shards
    for i in job_bar(list_done_shards(run), desc="validate", unit="shard", enabled=progress):
        paths = shard_paths(run, i)
        tar_name, index_name = paths["tar"].name, paths["index"].name
        rows: Optional[dict] = {}
        try:
            index_rows = pq.read_table(paths["index"]).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{index_name}: unreadable parquet ({' '.join(str(exc).split())})")
            rows, index_rows = None, []  # samples are still checked, just not against their rows
        for row in index_rows:
            if row["key"] in rows:
                problems.append(f"{index_name}: key {row['key']!r} listed twice")
            rows[row["key"]] = row
        try:
            for key, members in iter_members(paths["tar"]):
                checked += 1
                row = rows.pop(key, None) if rows is not None else None
                try:
                    if key in first_seen:
                        raise SchemaError(f"sample {key!r}: key: also in {first_seen[key]}")
                    first_seen[key] = tar_name
                    sample = _check_sample(key, members, num_frames, num_points)
                    if rows is not None:
                        _check_row(sample, row, tar_name)
                except SchemaError as exc:
                    problems.append(f"{tar_name}: {exc}")
        except SchemaError as exc:  # the tar itself is broken: the rest of it cannot be read
            problems.append(str(exc))
        for key in rows or ():
            problems.append(f"{tar_name}: sample {key!r}: listed in {index_name} but not in the tar")
    return checked, problems


def _check_sample(key: str, members: dict, num_frames: Optional[int], num_points: Optional[int]) -> Sample:
    sample = Sample.from_members(members, key)
    validate_sample(sample, num_frames=num_frames, num_points=num_points)
    if sample.key != key:
        raise SchemaError(f"sample {key!r}: key: json video_id {sample.meta['video_id']!r} has key {sample.key!r}")
    return sample


def _check_row(sample: Sample, row: Optional[dict], tar_name: str) -> None:
    """The index row must describe the sample it points to."""
    key = sample.key
    if row is None:
        raise SchemaError(f"sample {key!r}: index: no row for this key")
    expected = {
        "video_id": sample.meta["video_id"],
        "n_objects": len(sample.meta["objects"]),
        "n_frames": len(sample.meta["frame_indices"]),
        "shard": tar_name,
    }
    for field, value in expected.items():
        if row[field] != value:
            raise SchemaError(f"sample {key!r}: index.{field}: index says {row[field]!r}, sample has {value!r}")


def _fmt_range(r: Optional[dict], unit: str = "") -> str:
    if not r:
        return "-"
    return f"mean {r['mean']:.2f}{unit}, min {r['min']:g}{unit}, max {r['max']:g}{unit}"


def _bars(hist: dict[str, int]) -> list[str]:
    width = max(max(hist.values()), 1)
    return [f"  {label:>7} | {'#' * round(30 * count / width):<30} {count}" for label, count in hist.items()]


def format_summary(s: dict) -> str:
    lines = [f"run: {s['run']}", f"samples: {s['samples']}  shards: {s['shards']}"]
    if s["incomplete_shards"]:
        lines.append(f"incomplete shards (not in the catalogue; re-run to finish): {s['incomplete_shards']}")
    if s["samples"]:
        lines.append(f"objects per sample: {_fmt_range(s['objects_per_sample'])}")
        lines += _bars(s["objects_per_sample"]["histogram"])
        if "confidence" in s:
            lines.append(f"object confidence: {_fmt_range(s['confidence'])}")
            lines += _bars(s["confidence"]["histogram"])
        lines.append(f"caption length: {_fmt_range(s['caption_chars'], ' chars')}")
        lines.append(f"caption words: {_fmt_range(s['caption_words'])}")
        lines.append(f"frames per sample: {_fmt_range(s['frames'])}")
        lines.append(f"duration: {_fmt_range(s['duration_s'], ' s')}")
        for name, q in s.get("quality", {}).items():
            lines.append(f"quality {name}: mean {q['mean']:.4f} over {q['n']} samples")
    rej = s["rejects"]
    lines.append(f"rejects: {rej['total']}")
    for stage, entry in rej["by_stage"].items():
        lines.append(f"  {stage}: {entry['count']}")
        for reason in entry["top_reasons"]:
            text = reason["error"] if len(reason["error"]) <= 120 else reason["error"][:117] + "..."
            lines.append(f"    {reason['count']:>6} x {text}")
    if "stats" in s:
        figures = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["stats"].items()]
        lines.append("stats.json: " + (", ".join(figures) or "-"))
    return "\n".join(lines)


def print_keys(run: Path) -> None:
    """One line per sample: key, video_id, number of objects (from the index: no shard is read)."""
    from pipelines.shards import open_index

    table = open_index(run).to_table(columns=["key", "video_id", "n_objects"]).to_pylist()
    print("key\tvideo_id\tobjects")
    for row in table:
        print(f"{row['key']}\t{row['video_id']}\t{row['n_objects']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pite inspect", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="an annotate output directory (holds shards/, index/, rejects/)")
    parser.add_argument("--validate", action="store_true", help="read every shard and check every sample")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--frames", type=int, default=None, help="with --validate: every sample must have T frames")
    parser.add_argument("--points", type=int, default=None, help="with --validate: every object must have K points")
    parser.add_argument("--keys", action="store_true", help="list each sample's key and video_id (what `pite viz "
                                                           "--key` takes) and stop")
    args = parser.parse_args(argv)

    run = Path(args.run_dir)
    if not (run / "index").is_dir() and not (run / "shards").is_dir():
        print(f"pite inspect: {run}: not a run directory (no index/ or shards/)", file=sys.stderr)
        return 2
    try:
        if args.keys:
            print_keys(run)
            return 0
        summary = summarize(run)
        problems: list[str] = []
        if args.validate:
            checked, problems = validate_run(
                run, num_frames=args.frames, num_points=args.points
            )
            summary["validate"] = {"samples_read": checked, "bad": len(problems), "problems": problems}
    except (PiteError, pa.ArrowException) as exc:
        print(f"pite inspect: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
        if args.validate:
            v = summary["validate"]
            print(f"validate: {v['samples_read']} samples read, {v['bad']} problems")
            for line in problems:
                print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
