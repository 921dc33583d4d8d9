"""Turn a fully processed ClipItem into a sample (docs/design.md, "Sample schema"): normalised coordinates, contract
dtypes."""

from __future__ import annotations

import cv2
import numpy as np

from annotate.config import AnnotateConfig
from annotate.errors import StageError
from annotate.item import ClipItem
from annotate.schema import Sample, build_sample
from annotate.track import read_off_samples

STAGE = "assemble"
OUTLINE_POINTS = 48  # vertices kept per object outline: enough for a browser to draw the mask's shape, ~0.5 KB of json
OUTLINE_PARTS = 3  # largest separate parts of a mask kept (an occluded object splits in two)


def mask_outline(mask: np.ndarray, max_points: int = OUTLINE_POINTS, parts: int = OUTLINE_PARTS) -> list:
    """A bool (h, w) mask -> its outline as polygons of [x, y] in [0, 1] of the frame (largest parts first, each
    simplified with Douglas-Peucker until the polygons together have at most `max_points` vertices); [] if empty."""
    h, w = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)[:parts]
    if not contours:
        return []
    eps = 0.5
    while True:
        polys = [cv2.approxPolyDP(c, eps, True).reshape(-1, 2) for c in contours]
        if sum(len(p) for p in polys) <= max_points:
            break
        eps *= 1.5
    scale = np.array([w, h], dtype=np.float64)
    return [[[round(float(x), 4), round(float(y), 4)] for x, y in (p + 0.5) / scale] for p in polys if len(p) >= 3]


def object_entry(item: ClipItem, i: int, ground: np.ndarray) -> dict:
    """Grounding i of a processed item as the json's object; `ground` is (w, h, w, h) of the grounding frames."""
    clip, g = item.clip, item.groundings[i]
    phrase = item.phrases[g.phrase_index]
    t_ground = clip.track_times[g.track_frame]
    obj = {
        "phrase": phrase.text,
        "char_span": [phrase.start, phrase.end],
        # The T sample nearest in time to where the object was grounded.
        "frame": int(np.argmin(np.abs(clip.sample_times - t_ground))),
        "source_frame": int(g.source_frame),
        "box": [float(v) for v in np.asarray(g.box, np.float64) / ground],
        "score": float(g.score),
        "mask_area": float(g.mask_area if g.mask_area is not None else item.masks[i].mean()),  # share of frame
    }
    if i < len(item.masks) and item.masks[i] is not None:
        obj["outline"] = mask_outline(item.masks[i])  # the mask's shape at `frame`, for viewers
    if g.propagated_outline is not None:
        obj["propagated_outline"] = g.propagated_outline  # per T sample, from the propagate stage
    if g.confidence is not None:
        obj["confidence"] = round(float(g.confidence), 4)
        obj["confidence_signals"] = {k: (round(float(v), 4) if np.isfinite(v) else None)
                                     for k, v in g.signals.items()}
    if g.note:
        obj["note"] = g.note
    return obj


def assemble(item: ClipItem, cfg: AnnotateConfig, config_hash: str = "") -> Sample:
    """The sample of an item that went through every stage; StageError when it has no object left."""
    clip = item.clip
    if not item.groundings:
        reasons = sorted({d["reason"] for d in item.dropped}) or ["no phrase"]
        raise StageError(STAGE, f"no annotated object ({'; '.join(reasons)})")
    w, h = clip.size
    traj_px, vis = read_off_samples(item.tracks, item.track_vis, clip.track_times, clip.sample_times, size=(w, h))
    # Pixels -> [0, 1] of the displayed frame (decoding scales both axes alike): tracks are in tracking-frame
    # pixels, boxes in grounding-frame pixels.
    traj = traj_px / np.array([w, h], dtype=np.float64)
    ground = np.array(clip.ground_size * 2, dtype=np.float64)
    objects = [object_entry(item, i, ground) for i in range(len(item.groundings))]
    info = clip.info
    provenance = {
        "backends": dict(sorted(item.versions.items())),
        "config_hash": config_hash,
        "num_points": int(cfg.num_points),
        "track_fps": float(cfg.track_fps),
        "features": cfg.features.backend + (f"/{cfg.features.crop}" if cfg.features.backend == "clip" else ""),
    }
    return build_sample(
        video_id=item.video_id,
        caption=item.caption,
        width=info.width,
        height=info.height,
        fps=info.fps,
        duration=info.duration,
        frame_indices=clip.sample_indices,
        frame_times=clip.sample_times,
        objects=objects,
        traj=traj,
        vis=vis,
        feat=item.feat,
        dropped=item.dropped,
        unmatched=item.unmatched,
        provenance=provenance,
        events=item.events,
        num_points=cfg.num_points,
    )
