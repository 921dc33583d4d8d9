"""`pite browse` at PiTe-143k's size: building the table of 143k rows, and the table in headless Chromium.

  .venv/bin/python bench/browse.py                      # 143,000 rows (about 2 min on 2 cores)
  .venv/bin/python bench/browse.py --rows 20000 --pages-run runs/annotate/demo

A run of `--rows` samples is written with ShardWriter (1,000 per shard, 1 % rejects): each sample has the demo's
shape of json (3 objects with outlines, 100 frame indices) and small arrays, so the tars hold what the table reads
(the json members; the arrays are skipped by seeking either way). Then `build_site` with no sample pages, and the
site opened from file:// in Chromium: time to the first table page, and each query (filter + sort over every row)
as the page measures it (`PITE.lastQueryMs`) beside the wall time to the redrawn table. With --pages-run, pages
per second for that run's samples (frames decoded from its videos).

Prints one JSON object: rows, seconds (write_run, build_table), site_mb (columns.js, row files), chromium
(first_page_ms, queries: name -> {query_ms, redraw_ms, matching}), pages_per_s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from screenshots import chromium  # beside this script

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("red", "blue", "green", "striped", "dotted", "small", "big", "checkered")
SHAPES = ("ball", "square", "triangle", "star", "hexagon", "diamond", "dog", "car", "person", "bicycle")


def sample_members(i: int, rng: np.random.Generator) -> dict[str, bytes]:
    from annotate.schema import build_sample

    phrases = [f"a {WORDS[rng.integers(len(WORDS))]} {SHAPES[rng.integers(len(SHAPES))]}" for _ in range(3)]
    caption = " while ".join(p + " moves" for p in phrases) + "."
    objects, at = [], 0
    for p in phrases:
        start = caption.index(p, at)
        at = start + len(p)
        ring = [[round(0.3 + 0.1 * np.cos(a), 4), round(0.3 + 0.1 * np.sin(a), 4)] for a in np.linspace(0, 6, 40)]
        objects.append({"phrase": p, "char_span": [start, at], "frame": 0, "source_frame": 0,
                        "box": [0.2, 0.2, 0.4, 0.4], "score": 0.9, "mask_area": 0.03, "outline": [ring],
                        "confidence": round(float(rng.uniform(0.2, 1.0)), 4)})
    t = 100
    return build_sample(video_id=f"clip-{i:07d}", caption=caption, width=1280, height=720, fps=30.0,
                        duration=float(rng.uniform(2, 60)), frame_indices=list(range(0, 3 * t, 3)),
                        frame_times=[0.1 * k for k in range(t)], objects=objects,
                        traj=rng.uniform(0, 1, (3, 3, t, 2)), vis=np.ones((3, 3, t), bool),
                        feat=np.zeros((t, 8)), num_points=3).to_members()


def write_run(out: Path, rows: int, per_shard: int = 1000) -> None:
    from pipelines.shards import ShardWriter

    rng = np.random.default_rng(0)
    for s in range(0, rows, per_shard):
        with ShardWriter(out, s // per_shard, validate=False) as w:
            for i in range(s, min(rows, s + per_shard)):
                if i % 100 == 99:
                    w.reject(f"clip-{i:07d}", i, "decode", f"videos/clip-{i:07d}.mp4: moov atom not found")
                else:
                    w.add_members(sample_members(i, rng))


def in_chromium(site: Path) -> dict:
    from playwright.sync_api import sync_playwright

    browser_path = chromium()
    queries = {"confidence < 0.5": ("#conf_max", "0.5"), "phrase 'red dog'": ("#phrase", "red dog"),
               "duration >= 30 s": ("#dur_min", "30")}
    out = {"queries": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        t0 = time.perf_counter()
        tab.goto((site / "index.html").as_uri())
        tab.wait_for_selector("body[data-ready='1']", timeout=120_000)
        out["first_page_ms"] = round(1000 * (time.perf_counter() - t0))
        for name, (field, value) in queries.items():
            tab.click("#clear")
            tab.wait_for_function("document.body.dataset.matching === String(PITE.data.columns.n)")
            tab.evaluate("document.body.dataset.ready = '0'")
            t0 = time.perf_counter()
            tab.fill(field, value)
            tab.wait_for_function("document.body.dataset.ready === '1'")
            # The filters wait 120 ms for typing to stop before they run: not part of the query.
            redraw = 1000 * (time.perf_counter() - t0) - 120
            out["queries"][name] = {"query_ms": round(tab.evaluate("PITE.lastQueryMs"), 1),
                                    "redraw_ms": round(redraw), "matching": int(tab.evaluate(
                                        "document.body.dataset.matching"))}
        tab.evaluate("document.body.dataset.ready = '0'")
        t0 = time.perf_counter()
        tab.click("th button[data-sort=confidence]")
        tab.wait_for_function("document.body.dataset.ready === '1'")
        out["queries"]["sort by confidence"] = {"query_ms": round(tab.evaluate("PITE.lastQueryMs"), 1),
                                                "redraw_ms": round(1000 * (time.perf_counter() - t0))}
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=143_000)
    ap.add_argument("--pages-run", default=None, help="a run with videos: measure sample pages per second on it")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from pipelines.browse.site import Choice, build_site

    result: dict = {"rows": args.rows, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="pite-browse-bench-") as tmp:
        run, site = Path(tmp) / "run", Path(tmp) / "site"
        t0 = time.perf_counter()
        write_run(run, args.rows)
        result["seconds"]["write_run"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        build_site(run, site, Choice(pages=0), workers=args.workers)
        result["seconds"]["build_table"] = round(time.perf_counter() - t0, 1)
        rows_mb = sum(p.stat().st_size for p in (site / "data" / "rows").iterdir()) / 2**20
        result["site_mb"] = {"columns_js": round((site / "data" / "columns.js").stat().st_size / 2**20, 2),
                             "row_files": round(rows_mb, 2)}
        result["chromium"] = in_chromium(site)
        if args.pages_run:
            t0 = time.perf_counter()
            summary = build_site(args.pages_run, Path(tmp) / "pages", Choice(pages=10**9), workers=args.workers)
            result["pages_per_s"] = round(summary["pages_written"] / (time.perf_counter() - t0), 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
