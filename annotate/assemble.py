"""Turn a fully processed ClipItem into a sample (docs/design.md, "Sample schema") (normalised coordinates, contract dtypes)."""

from __future__ import annotations

import numpy as np

from annotate.config import AnnotateConfig
from annotate.errors import StageError
from annotate.item import ClipItem
from annotate.schema import Sample, build_sample
from annotate.track import read_off_samples

STAGE = "assemble"


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
    objects = []
    for i, g in enumerate(item.groundings):
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
        if g.confidence is not None:
            obj["confidence"] = round(float(g.confidence), 4)
            obj["confidence_signals"] = {k: (round(float(v), 4) if np.isfinite(v) else None)
                                         for k, v in g.signals.items()}
        if g.note:
            obj["note"] = g.note
        objects.append(obj)
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
