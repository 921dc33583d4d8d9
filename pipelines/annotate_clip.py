"""`pite annotate-clip --video V --caption C [--boxes JSON] [--config YAML] [key=value ...] --out DIR`.

One clip, no Ray: runs every stage in this process and writes its sample as DIR/<key>.json, .traj.npy, .vis.npy,
.feat.npy (docs/design.md, "Sample schema"). The default config is the embedded one; `--boxes` selects the given grounder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from annotate.errors import PiteError


CLIP_SOURCE = "annotate-clip.json"  # in the output dir: the sample's key and video


def annotate_one(cfg, video: str, caption: str, boxes: Optional[list] = None, video_id: Optional[str] = None,
                 start: Optional[float] = None, end: Optional[float] = None, gt: Optional[str] = None):
    """(sample or None, item): the item carries the reject reason when there is no sample."""
    from annotate.assemble import assemble
    from annotate.pipeline import ClipAnnotator, checked_stages, make_item
    from annotate.schema import validate_sample
    from annotate.stage import one_line
    from pipelines.annotate.config import stage_config_hash

    item = make_item(0, video_id or Path(video).stem, str(Path(video).resolve()), caption, cfg.seed,
                     start=start, end=end, boxes=boxes, gt=gt)
    ClipAnnotator(cfg, checked_stages(cfg)).setup().annotate([item])
    if not item.ok:
        return None, item
    try:
        sample = assemble(item, cfg, stage_config_hash(cfg))
        # As the Ray job's writer does: a sample that breaks the contract is a reject, never a file on disk.
        validate_sample(sample, num_frames=cfg.num_frames, num_points=cfg.num_points)
        return sample, item
    except PiteError as exc:
        item.reject(getattr(exc, "stage", "assemble"), one_line(exc))
        return None, item


def main(argv: Optional[list[str]] = None) -> int:
    from pipelines.annotate.config import AnnotateJobConfig
    from pipelines.config import load_config, parse_cli

    p = argparse.ArgumentParser(prog="pite annotate-clip", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True)
    p.add_argument("--caption", required=True)
    p.add_argument("--boxes", help='JSON list of {"phrase", "frame", "box": [x0, y0, x1, y1]} (source pixels), '
                                   "or a path to such a file")
    p.add_argument("--video-id", help="defaults to the file name without extension")
    p.add_argument("--start", type=float)
    p.add_argument("--end", type=float)
    p.add_argument("--config", help="YAML (configs/annotate/*.yaml); default: the embedded CPU backends")
    p.add_argument("--out", required=True, help="directory for the sample's files")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. segment.backend=sam segment.weights=...")
    args = parse_cli(p, argv)
    out = Path(args.out)
    try:
        if out.exists() and not out.is_dir():
            raise PiteError(f"--out: {out} is a file; give a folder for the sample's files")
        cfg = load_config(AnnotateJobConfig, args.config, args.overrides)
        boxes = None
        if args.boxes:
            text = args.boxes
            if not text.lstrip().startswith("["):
                if not Path(text).is_file():
                    raise PiteError(f"--boxes: {text} is neither a JSON list nor a file")
                text = Path(text).read_text()
            try:
                boxes = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PiteError(f"--boxes: not valid JSON ({exc.msg})") from None
            if not isinstance(boxes, list):
                raise PiteError("--boxes: expected a JSON list of {phrase, frame, box}")
        elif cfg.ground.backend == "given":
            raise PiteError("no --boxes given and ground.backend=given: pass --boxes, or set "
                            "ground.backend=groundingdino ground.weights=DIR")
        sample, item = annotate_one(cfg, args.video, args.caption, boxes, args.video_id, args.start, args.end)
    except PiteError as exc:
        for line in str(exc).splitlines():  # a preflight lists each problem on a line of its own
            print(f"pite annotate-clip: {line}", file=sys.stderr)
        return 2
    if sample is None:
        stage, msg = item.error
        print(f"pite annotate-clip: rejected at {stage}: {msg}", file=sys.stderr)
        return 1
    try:
        write_sample(sample, out, args)
    except OSError as exc:
        print(f"pite annotate-clip: --out: cannot write to {out} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print_result(sample, item, out)
    return 0


def write_sample(sample, out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix, data in sample.to_members().items():
        (out / f"{sample.key}.{suffix}").write_bytes(data)
    # What `pite viz DIR` needs to draw the sample again: its key and its video.
    (out / CLIP_SOURCE).write_text(json.dumps({"key": sample.key, "video": str(Path(args.video).resolve()),
                                               "caption": args.caption}, indent=1))


def print_result(sample, item, out: Path) -> None:
    """The sample in one line, then each phrase it dropped and each given box it did not use, with the reason."""
    m = sample.meta
    vis_share = float(sample.vis.mean()) if sample.vis.size else 0.0
    times = ", ".join(f"{k} {v:.2f}s" for k, v in item.timings.items())
    print(f"{sample.key}: {len(m['objects'])} objects ({', '.join(o['phrase'] for o in m['objects'])}), "
          f"{len(m['dropped'])} dropped, T={sample.traj.shape[2]}, visible {vis_share:.0%}; {times} -> {out}/")
    for d in m["dropped"]:
        print(f"  dropped {d['phrase']!r}: {d['reason']}")
    for u in m.get("unmatched", []):
        print(f"  given box {u.get('phrase', u.get('given'))!r} not used: {u['reason']}")


if __name__ == "__main__":
    sys.exit(main())
