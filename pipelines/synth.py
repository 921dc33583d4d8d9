"""`pite synth`: write synthetic clips with exact ground truth and an input manifest that points at them.

    pite synth --n 64 --seed 0 --out runs/synth [--width 256 --height 256 --frames 100 --fps 10]
               [--set p_occlusion=1.0 --set max_speed=4] [--workers 2]

Writes OUT/videos/<video_id>.mp4 (H.264), OUT/gt/<video_id>.gt.npz (`annotate.synthetic.GroundTruth`),
OUT/synth.json (the resolved world parameters and seed) and, last, OUT/manifest.jsonl (docs/design.md, "Input manifest";
relative paths). Clip i depends only on (seed, i, params), so any number of workers gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

import yaml
from pipelines.progress import job_bar

from annotate.errors import ConfigError
from annotate.synthetic import SynthClip, WorldParams, encode_mp4, make_clip, params_dict
from pipelines.files import write_atomic


def write_clip(clip: SynthClip, out: str | Path, params: WorldParams) -> dict:
    """Write one clip's video and ground truth under `out`; return its manifest row (paths relative to `out`)."""
    out = Path(out)
    video, gt = f"videos/{clip.video_id}.mp4", f"gt/{clip.video_id}.gt.npz"
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    data = encode_mp4(clip.frames, clip.fps, crf=params.crf, preset=params.preset)
    write_atomic(out / video, data)
    buf = io.BytesIO()
    clip.gt.save(buf)
    write_atomic(out / gt, buf.getvalue())
    return clip.manifest_row(video, gt)


def _one(job: tuple[int, int, WorldParams, str]) -> dict:
    seed, index, params, out = job
    return write_clip(make_clip(seed, index, params), out, params)


def parse_params(args: argparse.Namespace) -> WorldParams:
    """WorldParams from the size flags and `--set key=value` (values parsed as YAML scalars/lists)."""
    d = params_dict(WorldParams())
    for name in ("width", "height", "frames", "fps"):
        if getattr(args, name) is not None:
            d[name] = getattr(args, name)
    names = {f.name for f in fields(WorldParams)}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"--set {item!r}: expected key=value with key one of {sorted(names)}")
        try:
            d[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    try:
        return WorldParams.from_dict(d)
    except TypeError as exc:
        raise ConfigError(f"world parameters: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pite synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, required=True, help="number of clips")
    ap.add_argument("--seed", type=int, default=0, help="world seed: clip i is made from (seed, i)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--start", type=int, default=0, help="index of the first clip (video ids synth-<index>)")
    ap.add_argument("--width", type=int, help="frame width in px (default 256)")
    ap.add_argument("--height", type=int, help="frame height in px (default 256)")
    ap.add_argument("--frames", type=int, help="frames per clip (default 100)")
    ap.add_argument("--fps", type=float, help="frames per second (default 10)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other WorldParams field; repeatable")
    ap.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 0 or args.start < 0 or args.workers < 1:
        print("pite synth: --n and --start must be >= 0 and --workers >= 1", file=sys.stderr)
        return 2
    try:
        params = parse_params(args)
    except ConfigError as exc:
        print(f"pite synth: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth.json").write_text(json.dumps({"seed": args.seed, "start": args.start, "n": args.n,
                                                "params": params_dict(params)}, indent=2) + "\n")
    jobs = [(args.seed, i, params, str(out)) for i in range(args.start, args.start + args.n)]
    bar = dict(total=len(jobs), desc="synth", unit="clip")
    if args.workers == 1:
        rows = [_one(j) for j in job_bar(jobs, **bar)]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            rows = list(job_bar(pool.map(_one, jobs), **bar))
    # The manifest goes last, so a manifest on disk means every file it lists is there.
    write_atomic(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
