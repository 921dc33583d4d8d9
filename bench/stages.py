"""Seconds per clip of each annotation stage on its EMBEDDED CPU backend (given boxes, GrabCut, Lucas-Kanade,
thumbnail features: configs/annotate/demo.yaml's path) on default-world synthetic clips, one clip per call as
`pite annotate-clip` runs them.

    .venv/bin/python -m bench.stages [--clips 16] [--seed 1]      # ~20 s on 2 cores

Prints one JSON object. These figures describe the embedded path only, never production: the production backends at
their published sizes (Grounding DINO Swin-B, SAM vit_h, CoTracker3, CLIP ViT-L/14), run by the production actor on a
GPU, are timed by bench/realsize.py. Figures are timings, never asserted anywhere (docs/design.md, "Performance"):
compare them as ratios within one run, on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


import numpy as np  # noqa: E402

from annotate.config import AnnotateConfig
from annotate.pipeline import STAGE_NAMES, ClipAnnotator, make_item
from annotate.synthetic import WorldParams, make_clip, params_dict
from pipelines.synth import write_clip

# --- embedded stages --------------------------------------------------------------------------------------------


def bench_embedded(n_clips: int, seed: int) -> dict:
    """Each stage's seconds per clip on n default-world clips, one clip per call (as `pite annotate-clip` runs)."""
    params = WorldParams()
    cfg = AnnotateConfig()  # the embedded defaults: given / grabcut / lk / thumbnail
    with tempfile.TemporaryDirectory(prefix="pite-bench-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        rows = [write_clip(make_clip(seed, i, params), out, params) for i in range(n_clips)]
        make_s = time.perf_counter() - t0
        annotator = ClipAnnotator(cfg)
        setup_s = {}
        for stage in annotator.stages:
            t0 = time.perf_counter()
            stage.ready()
            setup_s[stage.name] = round(time.perf_counter() - t0, 4)
        per_stage = {name: [] for name in STAGE_NAMES}
        totals, objects, rejects = [], [], []
        for i, r in enumerate(rows):
            item = make_item(i, r["video_id"], str(out / r["video"]), r["caption"], cfg.seed, events=r["events"],
                             boxes=r["boxes"], gt=str(out / r["gt"]))
            t0 = time.perf_counter()
            annotator.annotate([item])
            totals.append(time.perf_counter() - t0)
            if not item.ok:
                rejects.append({"video_id": item.video_id, "stage": item.error[0], "error": item.error[1]})
                continue
            objects.append(len(item.groundings))
            for name in STAGE_NAMES:
                per_stage[name].append(item.timings[name])
    return {
        "clips": n_clips,
        "world": {k: params_dict(params)[k] for k in ("width", "height", "frames", "fps")} | {"seed": seed},
        "backends": {"ground": cfg.ground.backend, "segment": cfg.segment.backend, "track": cfg.track.backend,
                     "features": cfg.features.backend},
        "seconds_per_clip": {name: _summary(v) for name, v in per_stage.items()},
        "seconds_per_clip_all_stages": _summary(totals),
        "setup_seconds": setup_s,
        "make_clip_seconds_per_clip": round(make_s / max(1, n_clips), 4),
        "objects_per_clip": round(float(np.mean(objects)), 3) if objects else 0.0,
        "rejected": rejects,
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {"mean": round(statistics.fmean(values), 5), "median": round(statistics.median(values), 5),
            "min": round(min(values), 5), "max": round(max(values), 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=16, help="synthetic clips (default 16)")
    ap.add_argument("--seed", type=int, default=1, help="world seed of those clips")
    args = ap.parse_args(argv)
    if args.clips < 1:
        ap.error("--clips must be >= 1")
    report = {"host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
              "embedded": bench_embedded(args.clips, args.seed),
              "production_models": "not timed here: bench/realsize.py runs them at their published sizes"}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
