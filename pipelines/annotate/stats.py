"""The run's figures: counts by reason, seconds per stage, quality against ground truth, bytes through Ray."""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter, defaultdict

import numpy as np

from pipelines.annotate.config import QUALITY_COLUMNS
from pipelines.annotate.outputs import MAX_PREVIEWS
from pipelines.config import to_dict


def reason_class(msg: str) -> str:
    """Group reject messages for the summary: without the file they name, details in brackets, ids and numbers."""
    head, sep, rest = msg.partition(": ")
    if sep and ("/" in head or "\\" in head):  # "<path>: reason" -> the reason, the same for every file
        msg = rest
    msg = re.sub(r"'[^']*'", "'…'", msg.split(" (")[0])
    return re.sub(r"\d+", "N", msg)[:80]


class SampleShapes:
    """Objects per sample and each object's confidence as running histograms (10 bins over [0, 1]): what the
    dataset card shows, without a list per row."""

    BINS = 10

    def __init__(self):
        self.objects: Counter = Counter()
        self.confidence = [0] * self.BINS
        self.unscored = 0  # objects without a confidence (samples made without the confidence stage)

    def add(self, n_objects: int, confidences) -> None:
        self.objects[int(n_objects)] += 1
        for c in confidences or []:
            if c is None or not math.isfinite(c):
                self.unscored += 1
            else:
                self.confidence[min(self.BINS - 1, max(0, int(c * self.BINS)))] += 1

    def merge(self, other: "SampleShapes") -> "SampleShapes":
        out = SampleShapes()
        out.objects = self.objects + other.objects
        out.confidence = [a + b for a, b in zip(self.confidence, other.confidence)]
        out.unscored = self.unscored + other.unscored
        return out

    def to_stats(self) -> dict:
        n = sum(self.objects.values())
        mean = sum(k * v for k, v in self.objects.items()) / n if n else None
        return {"objects_per_sample": {"mean": None if mean is None else round(mean, 3),
                                       "counts": {str(k): v for k, v in sorted(self.objects.items())}},
                "confidence_histogram": {"bins": [round(i / self.BINS, 1) for i in range(self.BINS + 1)],
                                         "objects": list(self.confidence), "unscored": self.unscored}}


def counts_from_done(out, done: list[int], filesystem=None, threads: int = 1) -> dict:
    """Counts of shards kept from an earlier (interrupted) run, so stats cover the whole manifest: rows from the
    index's footer, reject stages and quality figures from their own columns (never whole files). `out` is a
    folder, or a bucket path read through `filesystem` (a pyarrow filesystem), where `threads` requests overlap
    (a request is tens of ms; 150k shards one at a time would take hours)."""
    from concurrent.futures import ThreadPoolExecutor

    written, by_stage, quality, shapes = 0, Counter(), QualitySums(), SampleShapes()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for rows, stages, sums, objects in pool.map(lambda s: _shard_counts(out, s, filesystem), done):
            written += rows
            by_stage.update(stages)
            for col, (total, n) in sums.items():
                quality.add_many(col, total, n)
            for n_objects, confidences in objects:
                shapes.add(n_objects, confidences)
    return {"written": written, "rejected": sum(by_stage.values()), "by_stage": by_stage, "quality": quality,
            "shards": len(done), "shapes": shapes}


def _shard_counts(out, s: int, filesystem) -> tuple[int, list[str], dict[str, tuple[float, int]], list]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    index = f"{out}/index/pite-{s:06d}.parquet"
    meta = pq.read_metadata(index, filesystem=filesystem)
    columns = [c for c in QUALITY_COLUMNS if c in meta.schema.names]
    sums, objects = {}, []
    if meta.num_rows:
        table = pq.read_table(index, columns=columns + ["n_objects", "confidence"], filesystem=filesystem)
        for col in columns:
            values = table.column(col).drop_null()
            if len(values):
                sums[col] = (pc.sum(values).as_py(), len(values))
        objects = list(zip(table.column("n_objects").to_pylist(), table.column("confidence").to_pylist()))
    stages = pq.read_table(f"{out}/rejects/pite-{s:06d}.parquet", columns=["stage"],
                           filesystem=filesystem).column("stage").to_pylist()
    return meta.num_rows, stages, sums, objects


def package_version(name: str) -> str | None:
    """An installed package's version without importing it (an executor=local run may have no Ray)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


MAX_NOTES = 50  # notes kept for stats.json; the rest are counted
REASON_VIDEOS = 5  # video_ids kept per reject reason, for the report


class QualitySums:
    """Running sum and count per quality figure: the run's means without a list per row."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add_many(self, key: str, total: float, n: int) -> None:
        self.sums[key] += total
        self.counts[key] += n

    def merge(self, other: "QualitySums") -> "QualitySums":
        merged = QualitySums()
        for q in (self, other):
            for k in q.counts:
                merged.add_many(k, q.sums[k], q.counts[k])
        return merged

    def means(self) -> dict[str, float]:
        return {k: round(self.sums[k] / n, 4) for k, n in sorted(self.counts.items()) if n}


class RunTally:
    """What the driver counts while rows come in (main thread) and shards are written (the writer thread): running
    sums and bounded samples only, so its memory does not grow with the rows."""

    def __init__(self):
        self.written = 0
        self.rejects_by_stage: Counter = Counter()
        self.reasons: Counter = Counter()
        self.reason_videos: dict[str, list[str]] = defaultdict(list)  # reason -> its first REASON_VIDEOS videos
        self.reason_first: dict[str, str] = {}  # reason -> its first message in full ("<video_id>: <message>")
        self.stage_seconds: Counter = Counter()
        self.quality = QualitySums()
        self.notes: list[str] = []  # the first MAX_NOTES
        self.notes_total = 0
        # (confidence, row, video_id, png): the first report_samples rows and the least trusted samples, at most
        # MAX_PREVIEWS kept (the lowest confidence first), so memory stays bounded on a corpus-sized run.
        self.previews: list[tuple[float, int, str, bytes]] = []
        self.first_previews: list[tuple[float, int, str, bytes]] = []
        self.bytes_in = 0  # row metadata read from the input files and handed to the actors
        self.bytes_out = 0  # what the actors returned: sample members, previews, figures
        self.retried = 0  # rows that were in flight when a worker process died, and ran again
        self.first_output = None  # seconds until the first row came back: actor start-up and model loading
        self.driver_wait = 0.0  # seconds the driver waited for the actors
        self.driver_write = 0.0  # seconds the writer thread spent writing shards
        self.shards = 0  # shards the writer committed
        self.shapes = SampleShapes()  # written by the writer thread only
        self.driver_write_blocked = 0.0  # seconds the driver waited for the writer (it was the bottleneck)

    def count_input(self, table) -> None:
        self.bytes_in += table.nbytes

    def take_row(self, rec: dict, report_samples: int) -> None:
        """One output row as it arrives: its timings, figures, note and preview."""
        from pipelines.annotate.outputs import output_bytes

        self.bytes_out += output_bytes(rec)
        self.retried += int(rec["attempts"]) > 1
        for k, v in json.loads(rec["timings"]).items():
            self.stage_seconds[k] += v
        if rec["note"]:
            self.notes_total += 1
            if len(self.notes) < MAX_NOTES:
                self.notes.append(f"row {int(rec['row'])} ({rec['video_id']}): {rec['note']}")
        if not rec["ok"] or not len(rec["m_json"]):
            return
        if rec["preview"] is not None and len(rec["preview"]):
            self.add_preview(float(rec["confidence"]), int(rec["row"]), rec["video_id"], bytes(rec["preview"]),
                             first=int(rec["row"]) < report_samples)
        rec["preview"] = b""  # drawn into the report; the shard does not need it

    def add_written(self, written: int, rejects: list[tuple[str, str, str]], figures: list[dict],
                    shapes: list[tuple[int, list]]) -> None:
        """A shard the writer committed: its samples, its rejects (stage, message, video_id), the quality figures
        of the samples it holds and their (objects, confidences)."""
        self.written += written
        self.shards += 1
        for n_objects, confidences in shapes:
            self.shapes.add(n_objects, confidences)
        for quality in figures:
            for k, v in quality.items():
                if v is not None and math.isfinite(v):
                    self.quality.add_many(k, v, 1)
        for stage, msg, video_id in rejects:
            self.rejects_by_stage[stage] += 1
            reason = f"{stage}: {reason_class(msg)}"
            self.reasons[reason] += 1
            if len(self.reason_videos[reason]) < REASON_VIDEOS:
                self.reason_videos[reason].append(video_id)
            self.reason_first.setdefault(reason, f"{video_id}: {msg}")

    def add_preview(self, confidence: float, row: int, video_id: str, png: bytes, first: bool = False) -> None:
        """`first`: one of the first report_samples rows, always kept; the others compete on low confidence."""
        (self.first_previews if first else self.previews).append((confidence, row, video_id, png))
        if len(self.previews) > 2 * MAX_PREVIEWS:  # trim now and then, not on every add
            self.previews = sorted(self.previews, key=lambda p: p[:2])[:MAX_PREVIEWS]

    def report_previews(self) -> list[tuple[float, int, str, bytes]]:
        return self.first_previews + sorted(self.previews, key=lambda p: p[:2])[:MAX_PREVIEWS]

    @property
    def processed(self) -> int:
        return self.written + sum(self.rejects_by_stage.values())


def build_stats(cfg, total: int, tally: RunTally, prev: dict, seconds: dict, chash: str,
                plan=None) -> dict:
    import av

    by_stage = Counter(tally.rejects_by_stage)
    by_stage.update(prev["by_stage"])
    quality = tally.quality.merge(prev["quality"])
    processed = tally.processed
    run_s = seconds["pipeline"]
    return {
        "input_rows": total,
        "written": tally.written + prev["written"],
        "rejected": sum(by_stage.values()),
        "rejected_by_stage": dict(sorted(by_stage.items())),
        "reject_reasons": dict(tally.reasons.most_common(20)),
        "reject_examples": {k: tally.reason_videos[k] for k, _ in tally.reasons.most_common(20)},
        "reject_first_message": {k: tally.reason_first.get(k, "") for k, _ in tally.reasons.most_common(20)},
        "shards": prev["shards"] + tally.shards,
        "shards_resumed": prev["shards"],
        "processed_this_run": processed,
        "rows_retried_after_a_worker_death": tally.retried,
        "seconds": {**{k: round(v, 3) for k, v in seconds.items()},
                    "first_output": None if tally.first_output is None else round(tally.first_output, 3),
                    "driver_wait": round(tally.driver_wait, 3), "driver_write": round(tally.driver_write, 3),
                    "driver_write_blocked": round(tally.driver_write_blocked, 3),
                    "per_stage": {k: round(v, 3) for k, v in sorted(tally.stage_seconds.items())}},
        "videos_per_second": round(processed / run_s, 3) if run_s > 0 and processed else None,
        "object_store": {"bytes_in": tally.bytes_in, "bytes_out": tally.bytes_out, "measured_by": "payload count",
                         "bytes_per_clip": round((tally.bytes_in + tally.bytes_out) / processed) if processed else None},
        "plan": None if plan is None else {"actors": plan.workers, "cpus_per_actor": plan.num_cpus,
                                           "gpus_per_actor": plan.num_gpus, "memory_gb_per_actor": plan.memory_gb},
        **tally.shapes.merge(prev["shapes"]).to_stats(),
        "quality": quality.means(),
        "quality_clips": dict(sorted(quality.counts.items())),
        "notes": tally.notes,
        "notes_total": tally.notes_total,
        "config": to_dict(cfg),
        "config_hash": chash,
        "ground_backend": cfg.ground.backend,
        "versions": {"python": sys.version.split()[0], "ray": package_version("ray"), "numpy": np.__version__,
                     "pyav": av.__version__},
    }


def run_failure(stats: dict, max_reject_share: float) -> str:
    """Why a finished run counts as failed ("" when it does not): no sample written from a non-empty input, or more
    rejects than max_reject_share of the input rows. Names the most common reject reason."""
    rows, written, rejected = stats["input_rows"], stats["written"], stats["rejected"]
    top = next(iter(stats.get("reject_reasons") or {}), "")
    why = f"; most common reason: {top}" if top else ""
    if rows and not written:
        return f"failed: no sample written, all {rows} rows rejected{why}"
    if rows and rejected / rows > max_reject_share:
        return (f"failed: {rejected} of {rows} rows rejected ({rejected / rows:.0%}), above max_reject_share="
                f"{max_reject_share:g}{why}")
    return ""


def summary_line(stats: dict, out) -> str:
    q = stats.get("quality") or {}
    quality = ", ".join(f"{k} {v:.3f}" for k, v in q.items())
    rej = ", ".join(f"{k} {v}" for k, v in stats["rejected_by_stage"].items()) or "none"
    vps = stats.get("videos_per_second")
    return (f"annotate: {stats['written']} samples, {stats['rejected']} rejects ({rej}) from {stats['input_rows']} rows"
            f" in {stats['seconds']['total']:.1f} s" + (f" ({vps:.2f} videos/s)" if vps else "")
            + (f"; quality vs ground truth: {quality}" if quality else "") + reject_lines(stats)
            + f"\n  outputs: {out}/ (report.html, stats.json, shards/, index/, rejects/)")


def reject_lines(stats: dict, most: int = 3) -> str:
    """The most common reject reasons of this run, each with its first message in full (the detail the grouped
    reason leaves out: which phrase, which file)."""
    first = stats.get("reject_first_message") or {}
    lines = [f"\n  rejects: {n} x {reason}" + (f"; first: {first[reason]}" if first.get(reason) else "")
             for reason, n in list((stats.get("reject_reasons") or {}).items())[:most]]
    return "".join(lines)
