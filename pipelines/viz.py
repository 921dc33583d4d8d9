"""`pite viz RUN_DIR --key K [--out OUT.(png|mp4|gif)] [--video V]`: one annotated sample's frames with its tracks.

The sample's `frame_indices` are source frame indices of its video, so the frames are decoded at exactly those
indices; the video path comes from the run's `input/*.parquet` (the manifest rows the run was made from) or from
`--video`. Tracks are normalised in the sample, so they are drawn at any decoded size.

Writers shared with `pite infer` and `pite evaluate`: `draw_tracks` (frames + normalised tracks -> drawn frames)
and `save_frames` (a PNG grid of evenly spaced frames, an H.264 mp4 via PyAV, or a GIF via Pillow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from annotate.draw import colour, contrasting_colours, draw_frame, encode_png, grid, label, object_means
from annotate.errors import PiteError
from annotate.schema import Sample, sanitize_key

FORMATS = (".png", ".mp4", ".gif")


# --- decoding at given source indices ---------------------------------------------------------------------------


def decode_at(video: str | Path, indices: Sequence[int], max_side: int = 480) -> np.ndarray:
    """(len(indices), h, w, 3) uint8 RGB: the frames at these source indices of the whole video (repeats allowed).

    decode_clip's `extra_indices` decodes exactly the frames asked for; a vanishing tracking rate keeps it from
    decoding anything else but the first and last frame.
    """
    from annotate.decode.video import decode_clip

    wanted = np.asarray(list(indices), dtype=np.int64)
    clip = decode_clip(video, num_samples=1, track_fps=1e-6, max_side=max_side, extra_indices=np.unique(wanted))
    return clip.track_frames[[clip.track_position(int(i)) for i in wanted]]


# --- drawing ----------------------------------------------------------------------------------------------------


def draw_tracks(frames: np.ndarray, traj: np.ndarray, vis: Optional[np.ndarray] = None,
                labels: Sequence[str] = (), tail: int = 10, boxes: Optional[Sequence] = None,
                outlines: Optional[Sequence] = None) -> list[np.ndarray]:
    """Each frame t with the tracks drawn at t (a dot with a tail; hollow where not visible) and a legend.

    traj (N, K, T, 2) normalised x/width, y/height; vis (N, K, T) or None (all visible); T = len(frames).
    boxes: optional per object (frame index, normalised xyxy) drawn on that frame (where it was grounded).
    outlines: optional per object its propagated mask's outline per frame (polygons of normalised [x, y], the
    sample's `propagated_outline`), drawn thin under the points: where the two disagree the track is suspect.
    """
    frames = np.asarray(frames)
    traj = np.asarray(traj, np.float64)
    t_count, h, w = frames.shape[0], frames.shape[1], frames.shape[2]
    if traj.ndim != 4 or traj.shape[2] != t_count or traj.shape[3] != 2:
        raise ValueError(f"draw_tracks: traj {traj.shape} does not match {t_count} frames as (N, K, T, 2)")
    pixels = traj * np.array([w, h])
    # Off-frame or absurd predictions stay drawable: cv2 needs ints of a sane size.
    pixels = np.clip(np.nan_to_num(pixels, nan=-10.0), -4 * max(w, h), 5 * max(w, h))
    colours = contrasting_colours(object_means(frames, pixels, vis))
    out = []
    for t in range(t_count):
        under = np.ascontiguousarray(frames[t].copy())
        _legend(under, labels, colours)  # first, so that dots and boxes stay visible over it
        draw_outlines(under, outlines, t, colours)
        img = draw_frame(under, tracks=pixels, vis=vis, t=t, tail=tail, colours=colours)
        for i, box in enumerate(boxes or []):
            if box is not None and int(box[0]) == t:
                x0, y0, x1, y1 = (float(v) for v in box[1])
                cv2.rectangle(img, (int(round(x0 * w)), int(round(y0 * h))),
                              (int(round(x1 * w)) - 1, int(round(y1 * h)) - 1), colours[i % len(colours)], 2,
                              cv2.LINE_AA)
        out.append(img)
    return out


def draw_outlines(img: np.ndarray, outlines: Optional[Sequence], t: int, colours) -> None:
    """Each object's propagated outline at frame t, thin in its colour over a dark edge (nothing where absent)."""
    h, w = img.shape[:2]
    for i, per_frame in enumerate(outlines or []):
        if not per_frame or t >= len(per_frame) or not per_frame[t]:
            continue
        polys = [np.round(np.asarray(p, np.float64) * [w, h] - 0.5).astype(np.int32) for p in per_frame[t]]
        cv2.polylines(img, polys, True, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.polylines(img, polys, True, colours[i % len(colours)], 1, cv2.LINE_AA)


def _legend(img: np.ndarray, labels: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> None:
    """The phrases top left, each in its object's colour on a dark band (drawn once, no outline)."""
    scale = max(0.4, min(0.7, img.shape[1] / 700))
    step = int(24 * scale / 0.5)
    for i, text in enumerate(labels):
        label(img, str(text)[:40], (6, step * (i + 1)), colours[i % len(colours)] if colours else colour(i), scale)


# --- writing ----------------------------------------------------------------------------------------------------


def save_frames(images: Sequence[np.ndarray], out: str | Path, fps: float = 10.0, tiles: int = 8,
                cols: int = 4) -> Path:
    """Write drawn frames: .png = a grid of `tiles` evenly spaced frames; .mp4 (H.264) or .gif = every frame."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise PiteError(f"{out}: unknown output format {suffix!r} (expected {' | '.join(FORMATS)})")
    if not images:
        raise PiteError(f"{out}: no frames to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        picks = np.unique(np.round(np.linspace(0, len(images) - 1, min(tiles, len(images)))).astype(int))
        out.write_bytes(encode_png(grid([images[i] for i in picks], cols=min(cols, len(picks)))))
    elif suffix == ".mp4":
        out.write_bytes(_encode_mp4(images, fps))
    else:
        from PIL import Image

        pil = [Image.fromarray(np.ascontiguousarray(im)) for im in images]
        pil[0].save(out, save_all=True, append_images=pil[1:], duration=int(round(1000 / fps)), loop=0)
    return out


def _encode_mp4(images: Sequence[np.ndarray], fps: float) -> bytes:
    """H.264 yuv420p via the synthetic world's encoder; yuv420p needs even sides, so odd frames get one black
    row/column."""
    from annotate.synthetic import encode_mp4

    h, w = images[0].shape[:2]
    padded = np.zeros((len(images), h + h % 2, w + w % 2, 3), np.uint8)
    for i, im in enumerate(images):
        padded[i, :h, :w] = im
    return encode_mp4(padded, fps, crf=20)


# --- finding a sample and its video -----------------------------------------------------------------------------


def clip_sample(out_dir: Path) -> tuple[Sample, str]:
    """The sample an `annotate-clip` output dir holds, and its video (from annotate-clip.json)."""
    from pipelines.annotate_clip import CLIP_SOURCE

    source = json.loads((out_dir / CLIP_SOURCE).read_text())
    key = source["key"]
    members = {p.name[len(key) + 1:]: p.read_bytes() for p in out_dir.iterdir()
               if p.name.startswith(key + ".") and p.name != CLIP_SOURCE}
    return Sample.from_members(members, key), source["video"]


def find_sample(run_dir: str | Path, key: str) -> Sample:
    """The sample `key` (a shard key, or a video_id) of a run, read from the shard its index row names."""
    import pyarrow.compute as pc

    from pipelines.shards import iter_samples, open_index

    run = Path(run_dir)
    if not (run / "index").is_dir():
        raise PiteError(f"{run}: not a run dir (no index/) nor an annotate-clip output (no annotate-clip.json)")
    table = open_index(run).to_table(columns=["key", "video_id", "shard"])
    rows = table.filter(pc.or_(pc.equal(table["key"], key), pc.equal(table["video_id"], key))).to_pylist()
    if not rows:
        raise PiteError(f"{run}: no sample with key or video_id {key!r}")
    row = rows[0]
    for sample in iter_samples(run / "shards" / row["shard"]):
        if sample.key == row["key"]:
            return sample
    raise PiteError(f"{run}/shards/{row['shard']}: sample {row['key']!r} listed in the index but not in the tar")


def video_of(run_dir: str | Path, video_id: str) -> str:
    """The video path of `video_id` from the run's input/*.parquet (written by `pite annotate`)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    folder = Path(run_dir) / "input"
    files = sorted(folder.glob("pite-*.parquet")) if folder.is_dir() else []
    if not files:
        raise PiteError(f"{run_dir}: no input/*.parquet to find the video of {video_id!r}; pass --video")
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(
        columns=["video_id", "video", "tar_member"], filter=pc.field("video_id") == video_id)
    if table.num_rows == 0:
        raise PiteError(f"{folder}: no input row for video_id {video_id!r}; pass --video")
    row = table.slice(0, 1).to_pylist()[0]
    if row.get("tar_member"):
        raise PiteError(f"{folder}: {video_id!r} was read from a video tar ({row['video']}); extract "
                        f"{row['tar_member']} and pass --video")
    return row["video"]


def render_sample(sample: Sample, video: str | Path, max_side: int = 480) -> list[np.ndarray]:
    """The sample's T frames (decoded at its frame_indices) with its tracks, grounding boxes and phrases drawn."""
    meta = sample.meta
    frames = decode_at(video, meta["frame_indices"], max_side=max_side)
    objects = meta.get("objects") or []
    boxes = [(o["frame"], o["box"]) for o in objects]
    traj = sample.traj.astype(np.float32)
    if traj.shape[0] == 0:
        traj = np.zeros((0, 1, len(frames), 2), np.float32)
    return draw_tracks(frames, traj, sample.vis if sample.vis.size else None,
                       labels=[o["phrase"] for o in objects], boxes=boxes,
                       outlines=[o.get("propagated_outline") for o in objects])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="pite viz", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run of `pite annotate` (or `pite convert`), or an `annotate-clip` output dir")
    ap.add_argument("--key", default=None, help="shard key or video_id of the sample (`pite inspect RUN --keys`); "
                                                "not needed for an annotate-clip output")
    ap.add_argument("--out", default=None, help="OUT.png (grid) | OUT.mp4 | OUT.gif; default RUN_DIR/viz/KEY.png")
    ap.add_argument("--video", default=None, help="the sample's video (default: from RUN_DIR/input)")
    ap.add_argument("--max-side", type=int, default=480, help="decode frames with their longer side at most this")
    ap.add_argument("--fps", type=float, default=10.0, help="frame rate of an mp4/gif")
    ap.add_argument("--tiles", type=int, default=8, help="frames in a PNG grid")
    args = ap.parse_args(argv)
    try:
        from pipelines.annotate_clip import CLIP_SOURCE

        if (Path(args.run_dir) / CLIP_SOURCE).is_file():  # an annotate-clip output dir: one sample
            sample, clip_video = clip_sample(Path(args.run_dir))
            video = args.video or clip_video
        elif args.key is None:
            raise PiteError(f"{args.run_dir}: --key is needed for a run (`pite inspect {args.run_dir} --keys` "
                            f"lists them)")
        else:
            sample = find_sample(args.run_dir, args.key)
            video = args.video or video_of(args.run_dir, sample.meta["video_id"])
        images = render_sample(sample, video, max_side=args.max_side)
        key = sanitize_key(sample.meta["video_id"])
        out = Path(args.out) if args.out else Path(args.run_dir) / "viz" / f"{key}.png"
        save_frames(images, out, fps=args.fps, tiles=args.tiles)
    except PiteError as exc:
        print(f"pite viz: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
