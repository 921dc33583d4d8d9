"""The run's figures: counts by reason, seconds per stage, quality against ground truth, bytes through Ray."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from pipelines.annotate.config import QUALITY_COLUMNS
from pipelines.config import to_dict


def reason_class(msg: str) -> str:
    """Group reject messages for the summary: without the file they name, details in brackets, ids and numbers."""
    head, sep, rest = msg.partition(": ")
    if sep and ("/" in head or "\\" in head):  # "<path>: reason" -> the reason, the same for every file
        msg = rest
    msg = re.sub(r"'[^']*'", "'…'", msg.split(" (")[0])
    return re.sub(r"\d+", "N", msg)[:80]


def counts_from_done(out: Path, done: list[int]) -> dict:
    """Counts of shards kept from an earlier (interrupted) run, so stats cover the whole manifest."""
    import pyarrow.parquet as pq

    written, rejected, by_stage, quality = 0, 0, Counter(), defaultdict(list)
    for s in done:
        idx = pq.read_table(out / "index" / f"pite-{s:06d}.parquet")
        written += idx.num_rows
        for col in QUALITY_COLUMNS:
            if col in idx.column_names:
                quality[col] += [v for v in idx.column(col).to_pylist() if v is not None]
        rj = pq.read_table(out / "rejects" / f"pite-{s:06d}.parquet").to_pylist()
        rejected += len(rj)
        by_stage.update(r["stage"] for r in rj)
    return {"written": written, "rejected": rejected, "by_stage": by_stage, "quality": quality, "shards": len(done)}


MAX_PREVIEWS = 64
REASON_VIDEOS = 5  # video_ids kept per reject reason, for the report


class RunTally:
    """What the driver counts while shards come in."""

    def __init__(self):
        self.written = 0
        self.rejects_by_stage: Counter = Counter()
        self.reasons: Counter = Counter()
        self.reason_videos: dict[str, list[str]] = defaultdict(list)  # reason -> its first REASON_VIDEOS videos
        self.reason_first: dict[str, str] = {}  # reason -> its first message in full ("<video_id>: <message>")
        self.stage_seconds: Counter = Counter()
        self.quality: dict[str, list[float]] = defaultdict(list)
        self.notes: list[str] = []
        # (confidence, row, video_id, png): the first report_samples rows and the least trusted samples, at most
        # MAX_PREVIEWS kept (the lowest confidence first), so memory stays bounded on a corpus-sized run.
        self.previews: list[tuple[float, int, str, bytes]] = []
        self.first_previews: list[tuple[float, int, str, bytes]] = []
        self.bytes_in = 0  # row metadata read by the reader tasks and handed to the actors
        self.bytes_out = 0  # what the actors returned: sample members, previews, figures
        self.bytes_source = "payload count"  # who measured them: Ray Data's operator stats, or our own count
        self.retried = 0  # rows that were in flight when a worker process died, and ran again
        self.first_output = None  # seconds until the first row came back: actor start-up and model loading

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


def build_stats(cfg, out: Path, total: int, tally: RunTally, prev: dict, seconds: dict, chash: str,
                plan=None) -> dict:
    import av
    import ray

    by_stage = Counter(tally.rejects_by_stage)
    by_stage.update(prev["by_stage"])
    quality = {k: list(v) for k, v in tally.quality.items()}
    for k, v in prev["quality"].items():
        quality.setdefault(k, []).extend(v)
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
        "shards": len(list((out / "shards").glob("pite-*.tar"))),
        "shards_resumed": prev["shards"],
        "processed_this_run": processed,
        "rows_retried_after_a_worker_death": tally.retried,
        "seconds": {**{k: round(v, 3) for k, v in seconds.items()},
                    "first_output": None if tally.first_output is None else round(tally.first_output, 3),
                    "per_stage": {k: round(v, 3) for k, v in sorted(tally.stage_seconds.items())}},
        "videos_per_second": round(processed / run_s, 3) if run_s > 0 and processed else None,
        "object_store": {"bytes_in": tally.bytes_in, "bytes_out": tally.bytes_out, "measured_by": tally.bytes_source,
                         "bytes_per_clip": round((tally.bytes_in + tally.bytes_out) / processed) if processed else None},
        "plan": None if plan is None else {"actors": plan.workers, "cpus_per_actor": plan.num_cpus,
                                           "gpus_per_actor": plan.num_gpus, "memory_gb_per_actor": plan.memory_gb},
        "quality": {k: round(float(np.mean(v)), 4) for k, v in sorted(quality.items()) if v},
        "quality_clips": {k: len(v) for k, v in sorted(quality.items())},
        "notes": tally.notes[:50],
        "config": to_dict(cfg),
        "config_hash": chash,
        "ground_backend": cfg.ground.backend,
        "versions": {"python": sys.version.split()[0], "ray": ray.__version__, "numpy": np.__version__,
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


def summary_line(stats: dict, out: Path) -> str:
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
