"""One page per chosen sample: its frames as one JPEG sheet and its arrays as a script the sample page draws from.

A page is `samples/<shard>/<key>.js` (`PITE.put("sample", {...})`) beside `<key>.jpg`, the shown frames tiled in a
grid. Frames are decoded from the sample's video at its `frame_indices`, as `pite viz` does; a video that cannot be
read leaves a page without frames that says why (the tracks are still drawn). Pages are built in worker processes,
a few samples of one shard per task, each reading only its samples' members from the tar.
"""

from __future__ import annotations

import base64
import json
import math
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from annotate.draw import PALETTE, contrasting_colours, object_means
from annotate.errors import PiteError, SchemaError
from annotate.schema import MEMBERS, Sample
from pipelines.files import write_atomic

PER_TASK = 16  # samples per worker task: one read of their shard's tar
JPEG_QUALITY = 85


def data_script(name: str, value) -> bytes:
    """A data file of the site: a script that hands `value` to the page (`PITE.put`), which file:// allows where
    fetch() is refused."""
    return f"PITE.put({json.dumps(name)}, {json.dumps(value, ensure_ascii=False, allow_nan=False)});\n".encode()


def wanted_samples(tar: Path, keys) -> Iterator[Sample]:
    """The samples `keys` of one shard tar, in tar order: headers are walked with seeks past every other sample's
    bytes, and the walk ends at the last one wanted (a task reads its few samples, not the whole shard)."""
    left, members = set(keys), {}
    try:
        with tarfile.open(tar, mode="r:") as tf:
            for info in tf:
                base, _, suffix = info.name.partition(".")
                if base not in left:
                    continue
                got = members.setdefault(base, {})
                got[suffix] = tf.extractfile(info).read()
                if all(m in got for m in MEMBERS):
                    yield Sample.from_members(members.pop(base), base)
                    left.discard(base)
                    if not left:
                        return
    except (tarfile.TarError, OSError) as exc:
        raise SchemaError(f"{tar}: unreadable tar ({exc})") from exc


def b64(arr: np.ndarray, dtype: str) -> str:
    """A little-endian typed array for the browser (`Float32Array`, `Uint16Array`...) as base64."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode("ascii")


def shown_frames(t: int, objects: Sequence[dict], max_frames: int) -> list[int]:
    """Which of the T sampled frames the page shows: evenly spaced, plus every object's grounding frame (where its
    mask outline is drawn), at most max_frames + number of objects."""
    even = np.unique(np.round(np.linspace(0, t - 1, min(t, max_frames))).astype(int)) if t else np.array([], int)
    return sorted(set(even.tolist()) | {int(o["frame"]) for o in objects})


def frame_sheet(frames: np.ndarray) -> tuple[bytes, int]:
    """(JPEG of the frames tiled row-major in `cols` columns, cols)."""
    n, h, w = frames.shape[:3]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = f
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise PiteError("browse: JPEG encoding failed")
    return buf.tobytes(), cols


def _hex(c: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in c)


def page_payload(sample: Sample, shard: str, shown: list[int], frames: Optional[np.ndarray], cols: int,
                 frames_note: str) -> dict:
    """What sample.js draws: the meta the page shows, colours, and the arrays as typed arrays (traj as float32:
    exact for the float16 it is stored in, and points that leave the frame keep their place outside it)."""
    meta = sample.meta
    objects = meta.get("objects") or []
    traj = np.nan_to_num(sample.traj.astype(np.float32), nan=-1.0)
    if frames is not None and len(objects):
        h, w = frames.shape[1:3]
        pixels = traj[:, :, shown] * np.array([w, h], np.float32)
        colours = contrasting_colours(object_means(frames, pixels, sample.vis[:, :, shown]))
    else:
        colours = [PALETTE[i % len(PALETTE)] for i in range(len(objects))]
    keep = ("phrase", "char_span", "frame", "box", "score", "mask_area", "confidence", "confidence_signals",
            "note", "outline", "propagated_outline")
    return {
        "key": sample.key, "shard": shard, "video_id": meta["video_id"], "caption": meta["caption"],
        "width": meta["width"], "height": meta["height"], "fps": meta["fps"], "duration": meta["duration"],
        "frame_times": meta["frame_times"], "frame_indices": meta["frame_indices"],
        "shown": shown, "sheet": f"{sample.key}.jpg" if frames is not None else None, "sheet_cols": cols,
        "frame_size": list(frames.shape[1:3][::-1]) if frames is not None else [meta["width"], meta["height"]],
        "frames_note": frames_note,
        "objects": [{**{k: o[k] for k in keep if k in o}, "colour": _hex(c)} for o, c in zip(objects, colours)],
        "dropped": meta.get("dropped") or [], "events": meta.get("events") or [],
        "provenance": meta.get("provenance") or {},
        "shape": list(sample.traj.shape),
        "traj": b64(traj, "<f4"),
        "vis": b64(sample.vis, "u1"),
    }


def _decode(video: Optional[str], indices: list[int], max_side: int) -> tuple[Optional[np.ndarray], str]:
    from pipelines.viz import decode_at

    if not video:
        return None, "frames not shown: the run's input/ has no video for this sample"
    try:
        return decode_at(video, indices, max_side=max_side), ""
    except (PiteError, OSError, ValueError, RuntimeError) as exc:
        return None, f"frames not shown: {video}: {str(exc).splitlines()[0][:200]}"


def build_pages(task: tuple) -> list[tuple[str, str]]:
    """One worker task: (tar, shard stem, {key: video or None}, out folder, max_frames, max_side) -> per sample
    (key, "" or why its frames are missing)."""
    tar, shard, videos, out, max_frames, max_side = task
    folder = Path(out) / "samples" / shard
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for sample in wanted_samples(tar, videos):
        meta = sample.meta
        shown = shown_frames(len(meta["frame_indices"]), meta.get("objects") or [], max_frames)
        frames, note = _decode(videos[sample.key], [meta["frame_indices"][t] for t in shown], max_side)
        cols = 0
        if frames is not None:
            jpeg, cols = frame_sheet(frames)
            write_atomic(folder / f"{sample.key}.jpg", jpeg)
        write_atomic(folder / f"{sample.key}.js", data_script("sample", page_payload(sample, shard, shown, frames,
                                                                                         cols, note)))
        done.append((sample.key, note))
    return done


def write_pages(tasks: list[tuple], workers: int) -> list[tuple[str, str]]:
    """Run the tasks (see build_pages) on `workers` processes (in this one when 1)."""
    if workers <= 1 or len(tasks) <= 1:
        return [r for t in tasks for r in build_pages(t)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [r for part in pool.map(build_pages, tasks) for r in part]
