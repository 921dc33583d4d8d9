"""report.html of an annotation run: counts, reject reasons, time per stage, quality, drawn samples.

A single static page with the pictures inlined (base64 PNG), so it can be mailed or opened from a bucket.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipelines.files import write_atomic

MAX_SHOWN = 48  # pictures in the report (the least trusted samples first)
QUALITY_NAMES = {
    "ground_recall": "grounding recall (box IoU ≥ 0.5 at the grounding frame)",
    "box_iou": "box IoU at the grounding frame",
    "mask_iou": "mask IoU at the grounding frame",
    "delta_avg": "TAP-Vid <δ<sup>x</sup><sub>avg</sub> of the tracks",
    "oa": "TAP-Vid occlusion accuracy",
    "aj": "TAP-Vid average Jaccard",
}


def _table(rows: list[tuple], head: tuple) -> str:
    th = f"<tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>" if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{th}{body}</table>" if rows else "<p>none</p>"


def write_report(out: Path, stats: dict, previews: list[tuple[float, int, str, bytes]]) -> Path:
    """report.html; previews are (lowest object confidence, row, video_id, png), shown least trusted first."""
    esc = html.escape
    counts = [("input rows", stats["input_rows"]), ("samples written", stats["written"]),
              ("rejected", stats["rejected"]), ("shards", stats["shards"]),
              ("shards kept from an earlier run", stats.get("shards_resumed", 0)),
              ("videos/s (this run)", stats.get("videos_per_second")),
              ("seconds: total / Ray start-up / pipeline",
               f"{stats['seconds']['total']} / {stats['seconds']['ray_startup']} / {stats['seconds']['pipeline']}")]
    per_stage = sorted(stats["seconds"]["per_stage"].items(), key=lambda kv: -kv[1])
    processed = max(1, stats.get("processed_this_run") or 1)
    quality = [(QUALITY_NAMES.get(k, esc(k)), f"{v:.3f}", stats.get("quality_clips", {}).get(k, ""))
               for k, v in stats.get("quality", {}).items()]
    trivial = ("<p><b>Grounding was given</b> (ground.backend given): boxes are the ground truth's own, so box IoU "
               "and grounding recall of 1.0 are trivial here; masks and tracks are measured.</p>"
               if stats.get("ground_backend") == "given" and quality else "")
    no_truth = "<p>none: no row has ground truth (the manifest's <code>gt</code> column)</p>"
    quality_html = _table(quality, ("figure", "mean over clips", "clips")) if quality else no_truth
    pics = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>row {row}: '
        f"{esc(vid)} (lowest object confidence {conf:.2f})</figcaption></figure>"
        for conf, row, vid, png in sorted(previews, key=lambda p: p[:2])[:MAX_SHOWN]
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PiTe annotation report: {esc(out.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}figure{{display:inline-block;margin:.4em}}
img{{max-width:100%;image-rendering:pixelated}}</style></head><body>
<h1>Annotation report: {esc(str(out))}</h1>
<h2>Counts</h2>{_table([(esc(k), esc(str(v))) for k, v in counts], ("", ""))}
<h2>Rejects by stage</h2>{_table([(esc(k), v) for k, v in stats["rejected_by_stage"].items()], ("stage", "rows"))}
<h2>Top reject reasons</h2>{_table([(esc(k), v, esc(", ".join(stats.get("reject_examples", {}).get(k, []))),
                                     esc(stats.get("reject_first_message", {}).get(k, "")))
                                    for k, v in stats["reject_reasons"].items()],
                                   ("reason", "rows", "first video_ids (rejects/*.parquet has all)",
                                    "first message in full"))}
<h2>Time per stage</h2>{_table([(esc(k), f"{v:.2f}", f"{v / processed:.3f}") for k, v in per_stage],
                               ("stage", "seconds (all workers)", "seconds per clip"))}
<h2>Quality against ground truth</h2>{trivial}{quality_html}
<h2>Notes</h2><p>Samples written without an extra (quality or picture) that failed; the first 50.</p>
{_table([(esc(n),) for n in stats.get("notes", [])], ("note",))}
<h2>Samples</h2><p>The least trusted first (each sample's lowest object confidence). Left: the grounding frame with
boxes and mask outlines; middle and right: the tracks at the middle and last sampled frame (filled dot = visible,
ring = not visible).</p>{pics or "<p>none</p>"}
</body></html>"""
    path = out / "report.html"
    write_atomic(path, page)
    return path
