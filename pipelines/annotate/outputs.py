"""What leaves an actor for a clip: its sample's members (or its reject), index figures, timings and a preview.

Only these travel back through Ray's object store: a few hundred KB per clip, never decoded frames.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from annotate.schema import MEMBERS
from annotate.stage import one_line

# A sample whose least trusted object is below this gets a preview for the report even past report_samples, when it
# is among the least trusted this actor has seen (the driver keeps the run's MAX_PREVIEWS least trusted).
LOW_CONFIDENCE_PREVIEW = 0.5
MAX_PREVIEWS = 64


class PreviewGate:
    """Which rows past report_samples an actor draws a preview for: those below LOW_CONFIDENCE_PREVIEW that are
    among the `keep` least trusted it has seen. About keep * ln(rows / keep) pictures an actor over a run (~500 at
    100k rows), where a fixed share of the rows would send hundreds of thousands that the driver throws away."""

    def __init__(self, keep: int = MAX_PREVIEWS):
        self.keep = keep
        self.worst: list[float] = []  # max-heap (negated) of the `keep` lowest confidences seen

    def admits(self, confidence: float) -> bool:
        import heapq

        if confidence >= LOW_CONFIDENCE_PREVIEW:
            return False
        if len(self.worst) < self.keep:
            heapq.heappush(self.worst, -confidence)
            return True
        if confidence < -self.worst[0]:
            heapq.heapreplace(self.worst, -confidence)
            return True
        return False


def member_column(member: str) -> str:
    return "m_" + member.replace(".", "_")


def object_array(values: list) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def outputs(items, cfg, sample_hash: str, attempts: dict[int, int] | None = None,
            gate: PreviewGate | None = None) -> dict:
    """Serialise each item as sample members (or a reject) + its index figures, timings and preview.

    Every item leaves as one output row: a failure while building its sample makes it a reject, and a failure of
    the extras (quality against ground truth, preview picture) only drops that extra, noted in `note`.
    """
    cols: dict[str, list] = defaultdict(list)
    gate = gate or PreviewGate()
    for it in items:
        members, quality, preview, note = {}, {}, b"", ""
        if it.ok:
            try:
                members = sample_members(it, cfg, sample_hash)
            except Exception as exc:  # noqa: BLE001 - a sample that cannot be built is a reject, never a crash
                it.reject(getattr(exc, "stage", "assemble"), one_line(exc))
                members = {}
        if it.ok and it.gt:
            try:
                from annotate.quality import clip_quality

                quality = clip_quality(it, cfg)
            except Exception as exc:  # noqa: BLE001 - ground truth only feeds the report
                note = f"quality: {one_line(exc)}"
        low = lowest_confidence(it)
        if it.ok and (it.row < cfg.report_samples or gate.admits(low)):
            try:
                preview = preview_png(it)
            except Exception as exc:  # noqa: BLE001 - a picture for the report, not part of the sample
                note = (note + "; " if note else "") + f"preview: {one_line(exc)}"
        cols["row"].append(it.row)
        cols["video_id"].append(it.video_id)
        cols["ok"].append(it.ok)
        cols["stage"].append(it.error[0] if it.error else "")
        cols["error"].append(it.error[1] if it.error else "")
        for m in MEMBERS:
            cols[member_column(m)].append(members.get(m, b""))
        cols["quality"].append(json.dumps(quality))
        cols["timings"].append(json.dumps(it.timings))
        cols["preview"].append(preview)
        cols["confidence"].append(low)
        cols["note"].append(note)
        cols["attempts"].append((attempts or {}).get(it.row, 1))
    return {k: (np.array(v) if k in ("row", "ok", "attempts", "confidence") else object_array(v))
            for k, v in cols.items()}


def lowest_confidence(item) -> float:
    """The item's least trusted object's confidence (1.0 when it has none: nothing to flag)."""
    values = [g.confidence for g in item.groundings if g.confidence is not None]
    return float(min(values)) if values else 1.0


def output_bytes(rec: dict) -> int:
    """Payload bytes of one output row as it crosses the object store (members, preview and the small fields)."""
    return sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in rec.values())


def sample_members(item, cfg, sample_hash: str) -> dict[str, bytes]:
    from annotate.assemble import assemble
    from annotate.schema import validate_sample

    sample = assemble(item, cfg, sample_hash)
    validate_sample(sample, num_frames=cfg.num_frames, num_points=cfg.num_points)
    return sample.to_members()


MIN_TILE = 320  # px: a report tile's least width, so labels and dots can be read
MAX_TILE = 400  # px: three tiles side by side fit the report's page unscaled, so nothing is drawn and then shrunk


def tile_scale(width: int) -> float:
    """Factor from a frame's width to its tile's, which lands in [MIN_TILE, MAX_TILE]: small frames (the demo's
    128 px) enlarged by a whole factor where one lands there, so that pixels stay square; others scaled to
    MAX_TILE before anything is drawn on them."""
    whole = -(-MIN_TILE // width)
    if width < MIN_TILE and width * whole <= MAX_TILE:
        return float(whole)
    return MAX_TILE / width if width > MAX_TILE or width < MIN_TILE else 1.0


def _to_size(img: np.ndarray, size: tuple[int, int], mask: bool = False) -> np.ndarray:
    """img resized to size (w, h): pixels repeated when enlarged, averaged when reduced (a mask then keeps the
    pixels at least half covered, so thin parts do not vanish as they would when sampled)."""
    import cv2

    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    enlarge = size[0] > img.shape[1]
    if mask:
        return cv2.resize(img.astype(np.float32), size, interpolation=cv2.INTER_NEAREST if enlarge else
                          cv2.INTER_AREA) >= 0.5
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if enlarge else cv2.INTER_AREA)


def preview_png(item) -> bytes:
    """The report's picture of a clip: the first grounding frame with its boxes and masks, two samples with tracks;
    each object in the palette colour farthest from its own. Frames are scaled to their tile first and drawn on at
    that size, so labels, outlines and dots keep their size in pixels on any source resolution."""
    from annotate.draw import contrasting_colours, draw_frame, encode_png, grid, object_means
    from annotate.track import read_off_samples

    clip = item.clip
    traj, vis = read_off_samples(item.tracks, item.track_vis, clip.track_times, clip.sample_times, size=clip.size)
    traj = traj * (np.array(clip.sample_size, float) / np.array(clip.size, float))  # tracking -> sample pixels
    colours = contrasting_colours(object_means(np.asarray(clip.sample_frames), traj, vis))
    f = tile_scale(clip.sample_size[0])
    tile = (round(clip.sample_size[0] * f), round(clip.sample_size[1] * f))  # (w, h) of every tile
    g0 = item.groundings[0]
    on_frame = [i for i, g in enumerate(item.groundings) if g.track_frame == g0.track_frame]
    frame = clip.ground_frame(g0.track_frame)  # at the grounding size, which can differ from the samples'
    to_tile = np.array(tile, float) / (frame.shape[1], frame.shape[0])  # (fx, fy)
    boxes = np.stack([item.groundings[i].box for i in on_frame]) * np.tile(to_tile, 2)
    masks = [None if item.masks[i] is None else _to_size(item.masks[i], tile, mask=True) for i in on_frame]
    tiles = [draw_frame(_to_size(frame, tile), boxes=boxes, masks=masks, colours=[colours[i] for i in on_frame],
                        labels=[item.phrases[item.groundings[i].phrase_index].text for i in on_frame])]
    to_tile = np.array(tile, float) / np.array(clip.sample_size, float)
    for t in (len(clip.sample_times) // 2, len(clip.sample_times) - 1):
        tiles.append(draw_frame(_to_size(clip.sample_frames[t], tile), tracks=traj * to_tile, vis=vis, t=t,
                                colours=colours))
    return encode_png(grid(tiles, cols=3))
