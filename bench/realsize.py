"""The production annotation actor at real sizes: seconds per clip per stage, device time and memory, and the price of
CoTracker's backward pass; prints one JSON object (progress goes to stderr).

    .venv/bin/python bench/realsize.py --device cuda --clips 8 --seconds 30          # a GPU node, as production
    .venv/bin/python bench/realsize.py --device cpu --clips 1 --seconds 3            # this CPU, subsampled (below)
    .venv/bin/python bench/realsize.py --device cpu --clips 1 --seconds 3 --compare configs/annotate/sam3.yaml
                                       # both recipes, each in its own process, and the SAM 3 recipe's ratios

What runs: `pipelines.annotate.actor.ClipChain`, the Ray actor itself (called in-process, without Ray), built from
configs/annotate/pite143k.yaml plus the overrides that `pite weights random` prints (random weights at the
published sizes: Grounding DINO Swin-B, SAM vit_h, CoTracker3 offline, CLIP ViT-L/14; FLOPs do not depend on the
values), every model stage on `--device`, and ground thresholds 0: random weights score nothing, so without them
no phrase would be grounded and the later stages would never run. Clips come from the synthetic world at the real
frame size (`python -m pipelines.synth`), called in batches of the recipe's `batch_size`, as the actor gets them.

On 2 CPU cores the published sizes take tens of seconds per frame (SAM vit_h's encoder, Grounding DINO Swin-B), so
`--device cpu` cuts some work (unless --no-subsample), listed under `subsampled` in the JSON; on CUDA nothing is cut.
With random weights and thresholds 0 every phrase is grounded in the first batch of grounding frames; real weights
may need more batches (late entrants).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from model_clock import (H100_BF16_FLOPS, MODEL_STAGES, FlopTally, ModelClock, count_flops,  # beside this script
                         instrument, sync)

REPO = Path(__file__).resolve().parents[1]

RECIPE = REPO / "configs" / "annotate" / "pite143k.yaml"
STAGES = ("decode", "nouns", "ground", "segment", "points", "track", "propagate", "confidence", "features")
# The config keys that put each model stage on a device.
DEVICE_KEYS = ("ground.device", "segment.device", "track.device", "confidence.device", "features.device")
CORPUS_CLIPS, CLUSTER_GPUS = 143_000, 8
BACKWARD_GOAL = 1.8  # the goal: the one-pass track stage at least this much faster than with backward_pass
# --device cpu: what is cut so that one short clip runs in minutes on 2 cores (reported in the JSON).
CPU_SUBSAMPLE = {
    "ground.every_n_frames=1000000": "Grounding DINO on tracking frame 0 only (production: every "
                                     "ground.every_n_frames-th tracking frame until every phrase is found)",
    "ground.batch_size=1": "one row (frame x prompt) per Grounding DINO forward",
    "num_frames=16": "16 sampled frames per clip, so CLIP ViT-L/14 encodes 16 frames (production: 100)",
}


def log(message: str) -> None:
    print(f"[realsize] {message}", file=sys.stderr, flush=True)


# --- inputs -----------------------------------------------------------------------------------------------------


def ensure_sam3_weights(folder: Path, size: str) -> list[str]:
    """The same for configs/annotate/sam3.yaml: SAM 3, SAM 2.1 video (the recipe's propagator), CoTracker3, CLIP."""
    if not (folder / "sam3" / "config.json").is_file():
        log(f"writing {size} random weights to {folder} (pite weights random --recipe sam3)")
        cmd = [sys.executable, "-m", "pipelines.cli", "weights", "random", "--size", size, "--out", str(folder),
               "--recipe", "sam3"]
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    track = folder / "cotracker3_offline.pth"
    if not track.is_file():
        raise SystemExit(f"realsize: {folder} has no cotracker3_offline.pth (`make cotracker`); delete it to rewrite")
    return [f"ground.weights={folder / 'sam3'}", f"confidence.weights={folder / 'sam2-video'}",
            f"track.weights={track}", f"features.weights={folder / 'clip-vit-large-patch14'}"]


def ensure_weights(folder: Path, size: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Overrides pointing the recipe at the random weights in `folder`, made by `pite weights random` if absent."""
    if not (folder / "grounding-dino" / "config.json").is_file():
        log(f"writing {size} random weights to {folder} (pite weights random)")
        cmd = [sys.executable, "-m", "pipelines.cli", "weights", "random", "--size", size, "--out", str(folder),
               *extra]
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    sams = sorted(folder.glob("sam_*.pth"))
    track = folder / "cotracker3_offline.pth"
    if len(sams) != 1 or not track.is_file():
        raise SystemExit(f"realsize: {folder} needs one sam_*.pth and cotracker3_offline.pth (is `cotracker` "
                         "installed? `make cotracker`); delete the folder to write it again")
    sam_type = sams[0].stem.removeprefix("sam_")
    return [f"ground.weights={folder / 'grounding-dino'}", f"segment.weights={sams[0]}",
            f"segment.model_type={'auto' if sam_type == 'tiny' else sam_type}", f"track.weights={track}",
            f"features.weights={folder / 'clip-vit-large-patch14'}"]


def ensure_clips(folder: Path, n: int, width: int, height: int, frames: int, fps: float) -> Path:
    """A manifest of n synthetic clips of this shape, generated by `python -m pipelines.synth` unless present."""
    manifest = folder / "manifest.jsonl"
    made = folder / "synth.json"
    if manifest.is_file() and made.is_file():
        old = json.loads(made.read_text())
        p = old.get("params", {})
        if old.get("n") == n and (p.get("width"), p.get("height"), p.get("frames"), p.get("fps")) == (
                width, height, frames, fps):
            return manifest
    log(f"writing {n} synthetic clips of {width}x{height}, {frames} frames at {fps:g} fps to {folder}")
    cmd = [sys.executable, "-m", "pipelines.synth", "--n", str(n), "--seed", "0", "--out", str(folder),
           "--width", str(width), "--height", str(height), "--frames", str(frames), "--fps", str(fps),
           "--workers", str(max(1, min(n, os.cpu_count() or 1)))]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return manifest


def manifest_batches(manifest: Path, batch_size: int) -> list[dict]:
    """The manifest's rows as the actor receives them from the readers (numpy batches of row metadata), without
    ground-truth paths: production clips have none, so no quality figures are computed."""
    import numpy as np

    from pipelines.manifest import iter_manifest

    records = [{**r.to_record(), "gt": None} for r in iter_manifest(str(manifest))]
    chunks = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    return [{k: np.array([r[k] for r in chunk], dtype=object) for k in chunk[0]} for chunk in chunks]




# --- the measurements -------------------------------------------------------------------------------------------


def run_clips(chain, batches: list[dict], clock: ModelClock, cuda: bool) -> dict:
    """Every batch through the actor; per-stage seconds per clip from the items' timings (the `timings` column)."""
    clock.take()
    sync(cuda)
    t0 = time.perf_counter()
    rows = []
    for batch in batches:
        out = chain(batch)
        rows += [{"ok": bool(ok), "stage": st, "error": err, "timings": json.loads(tm),
                  "objects": len(json.loads(meta)["objects"]) if ok else 0}
                 for ok, st, err, tm, meta in zip(out["ok"], out["stage"], out["error"], out["timings"],
                                                  out["m_json"])]
    sync(cuda)
    wall = time.perf_counter() - t0
    model = clock.take()
    n = len(rows)
    stages = {}
    for name in STAGES:
        ran = [r["timings"][name] for r in rows if name in r["timings"]]
        stages[name] = round(sum(ran) / len(ran), 3) if ran else None
    return {"clips": n, "wall_s": wall, "seconds_per_clip": wall / n, "stages": stages,
            "model_s_per_clip": {s: model.get(s, 0.0) / n for s in MODEL_STAGES},
            "objects_per_clip": round(sum(r["objects"] for r in rows) / n, 2),
            "rejected": [{"stage": r["stage"], "error": r["error"][:200]} for r in rows if not r["ok"]]}


def backward_vs_one_pass(chain, item, clock: ModelClock, cuda: bool, repeats: int) -> dict:
    """The track stage on the same decoded clip and points with backward_pass false and true, alternating,
    `repeats` times each; the fastest run of each counts (the others lost time to something else).

    The ratio is of wall seconds on CUDA; on the CPU it is of this process's CPU seconds (all its threads), which
    other processes on a shared machine do not inflate the way they inflate wall time."""
    import numpy as np

    track = next(s for s in chain.stages if s.name == "track")
    cfg = track.cfg.track
    keep = cfg.backward_pass
    runs = defaultdict(list)
    clock.stage = "track"
    try:
        for _ in range(repeats):
            for label, backward in (("one_pass", False), ("backward_pass", True)):
                cfg.backward_pass = backward
                clock.take()
                sync(cuda)
                t0, c0 = time.perf_counter(), time.process_time()
                track.process_item(item)
                sync(cuda)
                runs[label].append((time.perf_counter() - t0, time.process_time() - c0,
                                    clock.take().get("track", 0.0)))
    finally:
        cfg.backward_pass = keep
    result = {"repeats": repeats}
    for label, times in runs.items():
        for i, key in enumerate(("s", "cpu_s", "model_s")):
            result[f"{label}_{key}"] = round(min(t[i] for t in times), 3)
    frames = len(item.clip.track_frames)
    window = cfg.window if 0 < cfg.window < frames else frames
    basis = "s" if cuda else "cpu_s"
    result.update({
        "ratio": round(result[f"backward_pass_{basis}"] / result[f"one_pass_{basis}"], 3),
        "ratio_of": "wall seconds" if cuda else "process CPU seconds",
        "model_ratio": round(result["backward_pass_model_s"] / max(result["one_pass_model_s"], 1e-9), 3),
        "goal": BACKWARD_GOAL, "tracking_frames": frames, "window": window, "overlap": cfg.overlap,
        "points": int(np.prod(np.shape(item.points)[:2])), "interp_shape": list(cfg.interp_shape)})
    result["meets_goal"] = result["ratio"] >= BACKWARD_GOAL
    return result


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def peak_memory(cuda: bool) -> tuple[float, str]:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated, GiB"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS of this process, GiB"


# --- the report -------------------------------------------------------------------------------------------------


def report(args, cfg, overrides, subsampled, setup_s, warmup, run, backward, cuda, flops) -> dict:
    import torch

    peak, peak_kind = peak_memory(cuda)
    model_s = sum(run["model_s_per_clip"].values())
    stage_s = sum(run["stages"][s] or 0.0 for s in MODEL_STAGES)
    sizes = "tiny (plumbing only)" if "segment.model_type=auto" in overrides else "the published sizes"
    notes = [f"weights: random, {sizes} ({args.weights}); ground thresholds 0 so every stage runs",
             "stages: mean seconds per clip over the clips that ran the stage, from the items' timings (ClipChain's "
             "`timings` column); a batched stage's time is shared evenly by its batch"]
    if cuda:
        notes.append("gpu_seconds_per_clip: CUDA-event time inside model calls (ModelClock); device_busy_share: "
                     "that over the wall time of the measured actor calls")
    else:
        notes.append("CPU run: gpu_seconds_per_clip is the CPU wall seconds of the model stages (ground, segment, "
                     "track, features) per clip, and device_busy_share is their share of the wall time; no device "
                     "was measured. No warm-up clip on the CPU: the stages' figures include first-call costs")
    notes.append(f"projected_hours_143k_8gpu = {CORPUS_CLIPS} x seconds_per_clip / {CLUSTER_GPUS} / 3600, "
                 f"one actor per GPU at this device's seconds per clip")
    notes.append(f"flops_per_clip: torch.utils.flop_counter over {flops.get('flops_clips')} clip(s) of the "
                 f"production recipe (nothing subsampled), matmuls, convolutions and attention only; "
                 f"roofline_clips_per_hour_h100 = 3600 / (flops_per_clip_total / (share x {H100_BF16_FLOPS:.3g} "
                 f"bf16 FLOP/s)): a bound that ignores decoding, memory traffic and the CPU stages")
    per_clip = run["seconds_per_clip"]
    return {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
        "torch": torch.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "recipe": str(Path(args.recipe).resolve().relative_to(REPO)),
        "overrides": [o for o in overrides if ".weights=" not in o],
        "subsampled": subsampled or "nothing: the production recipe as is",
        "clips": run["clips"], "clip_seconds": args.seconds, "size": f"{args.width}x{args.height}", "fps": args.fps,
        "batch_size": cfg.batch_size, "warmup_clips": warmup,
        "setup_s": round(setup_s, 1),
        "wall_s": round(run["wall_s"], 2),
        "seconds_per_clip": round(per_clip, 3),
        "stages": run["stages"],
        "objects_per_clip": run["objects_per_clip"],
        "gpu_seconds_per_clip": round(model_s if cuda else stage_s, 3),
        "gpu_seconds_per_clip_by_stage": {k: round(v, 3) for k, v in run["model_s_per_clip"].items()} if cuda
        else {s: run["stages"][s] for s in MODEL_STAGES},
        "model_call_seconds_per_clip": round(model_s, 3),
        "device_busy_share": round((model_s if cuda else stage_s) / per_clip, 3),
        "peak_memory_gb": round(peak, 2), "peak_memory_kind": peak_kind,
        "projected_hours_143k_8gpu": round(CORPUS_CLIPS * per_clip / CLUSTER_GPUS / 3600, 1),
        "cotracker_backward_vs_one_pass": backward,
        **flops,
        "rejected": run["rejected"],
        "notes": notes,
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="runs/realsize/weights-real",
                    help="random weights folder; written by `pite weights random` when absent")
    ap.add_argument("--weights-size", default="real", choices=("real", "tiny"),
                    help="size written when --weights is absent (tiny: a smoke test of the plumbing only)")
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="clip length")
    ap.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the clips")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the clips")
    ap.add_argument("--clips-dir", default="", help="where the clips go (default runs/realsize/synth-...)")
    ap.add_argument("--repeats", type=int, default=0,
                    help="runs of the track stage per setting in the backward-pass comparison (0: 2 on cuda, 1 on cpu)")
    ap.add_argument("--no-subsample", action="store_true", help="--device cpu: run the recipe uncut")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    ap.add_argument("--recipe", default=str(RECIPE), help="annotate config (configs/annotate/cpu.yaml: the laptop one)")
    ap.add_argument("--gdino", default="base", choices=("base", "tiny"), help="--weights-size real: Grounding DINO")
    ap.add_argument("--sam-type", default=None, choices=("vit_b", "vit_l", "vit_h"), help="--weights-size real")
    return ap


def parse_args(argv):
    args = build_parser().parse_args(argv)
    try:
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"realsize: --size {args.size!r}: expected WIDTHxHEIGHT") from None
    if args.clips < 1 or args.seconds <= 0 or args.fps <= 0 or args.repeats < 0:
        raise SystemExit("realsize: --clips must be >= 1, --seconds and --fps > 0, --repeats >= 0")
    return args


def is_sam3(recipe: str) -> bool:
    import yaml

    return (yaml.safe_load(Path(recipe).read_text()).get("ground") or {}).get("backend") == "sam3"


def compare(argv: list[str], recipes: list[str]) -> int:
    """Each recipe in a process of its own (its own peak memory), same clips and settings; both reports and the
    ratios of the second to the first, per stage."""
    reports = []
    for recipe in recipes:
        log(f"--- {recipe}")
        done = subprocess.run([sys.executable, __file__, *argv, "--recipe", recipe], cwd=REPO, check=True,
                              stdout=subprocess.PIPE, text=True)
        reports.append(json.loads(done.stdout))
    a, b = reports

    def ratio(x, y):
        return round(y / x, 2) if x else None

    out = {"recipes": recipes, "reports": reports, f"ratio_{Path(recipes[1]).stem}_over_{Path(recipes[0]).stem}": {
        "seconds_per_clip": ratio(a["seconds_per_clip"], b["seconds_per_clip"]),
        "stages": {s: ratio(a["stages"].get(s) or 0, b["stages"].get(s) or 0) for s in STAGES},
        "flops_per_clip_total": ratio(a["flops_per_clip_total"], b["flops_per_clip_total"]),
        "peak_memory_gb": ratio(a["peak_memory_gb"], b["peak_memory_gb"])}}
    print(json.dumps(out, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--compare" in argv:
        at = argv.index("--compare")
        return compare(argv[:at] + argv[at + 2:], [str(RECIPE), argv[at + 1]])
    args = parse_args(argv)
    import torch

    from pipelines.annotate.actor import ClipChain
    from pipelines.annotate.config import AnnotateJobConfig, stage_config_hash
    from pipelines.config import load_config

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("realsize: --device cuda but torch sees no CUDA device")
    frames = max(2, round(args.seconds * args.fps))
    clips_dir = Path(args.clips_dir or REPO / "runs" / "realsize" /
                     f"synth-{args.width}x{args.height}-{frames}f-{args.fps:g}fps-{args.clips}")
    manifest = ensure_clips(clips_dir, args.clips, args.width, args.height, frames, args.fps)
    extra = ("--gdino", args.gdino, *(["--sam-type", args.sam_type] if args.sam_type else []))
    if is_sam3(args.recipe):
        weights = ensure_sam3_weights(Path(args.weights).resolve() / "sam3-recipe", args.weights_size)
    else:
        weights = ensure_weights(Path(args.weights).resolve(), args.weights_size,
                                 extra if args.weights_size == "real" else ())
    subsampled = dict(CPU_SUBSAMPLE) if not cuda and not args.no_subsample else {}
    devices = [f"{key}={args.device}" for key in DEVICE_KEYS]
    overrides = weights + ["ground.box_threshold=0", "ground.text_threshold=0", "report_samples=0", *devices,
                           *subsampled, *args.set]
    cfg = load_config(AnnotateJobConfig, args.recipe, overrides)
    batches = manifest_batches(manifest, cfg.batch_size)
    clock, kept, tally = ModelClock(cuda), [], FlopTally()
    with clock, tempfile.TemporaryDirectory(prefix="pite-realsize-") as ledger:
        log(f"loading the models on {args.device}")
        t0 = time.perf_counter()
        chain = ClipChain(cfg, ledger, stage_config_hash(cfg), cfg.decode_threads)
        setup_s = time.perf_counter() - t0
        instrument(chain, clock, kept, tally)
        warmup = 0
        if cuda:  # first calls pay one-off costs (kernel selection, allocator growth): one clip, not measured
            log("warm-up clip")
            chain(manifest_batches(manifest, 1)[0])
            warmup, kept[:] = 1, []
        log(f"{args.clips} clip(s) of {args.seconds:g} s through the actor")
        run = run_clips(chain, batches, clock, cuda)
        log("the track stage with and without the backward pass")
        repeats = args.repeats or (2 if cuda else 1)
        backward = (backward_vs_one_pass(chain, kept[0], clock, cuda, repeats) if kept
                    else {"skipped": "no clip reached the track stage"})
        if subsampled:  # FLOPs of the production recipe: a chain without the CPU cuts, on one clip
            del chain
            cfg = load_config(AnnotateJobConfig, args.recipe, [o for o in overrides if o not in subsampled])
            chain = ClipChain(cfg, ledger, stage_config_hash(cfg), cfg.decode_threads)
            instrument(chain, clock, [], tally)
        log("FLOPs per clip (one clip, the production recipe)")
        flops = count_flops(chain, manifest_batches(manifest, 1)[0], tally)
    print(json.dumps(report(args, cfg, overrides, subsampled, setup_s, warmup, run, backward, cuda, flops), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
