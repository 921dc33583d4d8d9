"""Quality of the embedded path against the synthetic world's ground truth (issue 3's floors), and worked checks
of `annotate.quality.clip_quality` itself: ground-truth predictions score perfectly, known errors score as by hand.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from annotate.config import AnnotateConfig, TrackConfig
from annotate.quality import clip_quality
from annotate.synthetic import GroundTruth, WorldParams, make_clip, params_dict
from pipelines.synth import write_clip
from tests.annotate_helpers import annotate_rows

# --- the floors (issue 3) ----------------------------------------------------------------------------------------

SEED = 1  # not the demo's seed 0: the floors must hold on clips nobody looked at while tuning
N_CLIPS = 32
FLOORS = {"mask_iou": 0.75, "delta_avg": 0.70, "oa": 0.80}
# The world the floors were measured on: WorldParams' defaults when issue 3 set them. Making the world easier
# (slower objects, fewer occlusions, ...) must be a visible decision: it fails here until this table changes too.
MEASURED_ON = {
    "width": 256, "height": 256, "frames": 100, "fps": 10.0, "min_objects": 2, "max_objects": 4, "min_size": 0.14,
    "max_size": 0.27, "min_speed": 0.8, "max_speed": 2.5, "speed_variation": 0.5, "max_turn": 0.06, "p_stop": 0.35,
    "stop_seconds": [1.0, 2.5], "max_scale_change": 0.3, "max_rotation_deg": 20.0, "pan_speed": 0.8,
    "p_occlusion": 0.5, "p_late_entry": 0.3, "p_exit": 0.3, "given_box_min_visible": 0.8, "crf": 18,
    "preset": "veryfast",
}
FIGURES = ("ground_recall", "box_iou", "mask_iou", "delta_avg", "oa", "aj")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """32 clips of the default world, annotated with given boxes, GrabCut, LK and thumbnails (~40 s on 2 cores)."""
    out = tmp_path_factory.mktemp("quality-world")
    params = WorldParams()
    clips = [make_clip(SEED, i, params) for i in range(N_CLIPS)]
    rows = [write_clip(c, out, params) for c in clips]
    cfg = AnnotateConfig()  # the embedded defaults: given / grabcut / lk / thumbnail
    items = annotate_rows(rows, out, cfg)
    per_clip = [clip_quality(it, cfg) if it.ok else None for it in items]
    return {"params": params, "clips": clips, "items": items, "per_clip": per_clip, "cfg": cfg}


@pytest.mark.slow
def test_the_world_is_the_default_one(world):
    assert world["cfg"] == AnnotateConfig()
    assert (world["cfg"].ground.backend, world["cfg"].segment.backend, world["cfg"].track.backend,
            world["cfg"].features.backend) == ("given", "grabcut", "lk", "thumbnail")
    assert params_dict(world["params"]) == params_dict(WorldParams()), "the floors are measured on the defaults"
    assert params_dict(WorldParams()) == MEASURED_ON, "WorldParams' defaults changed: the floors need re-measuring"
    # The hard cases are really in the measured set, not only in the parameters.
    roles = [o["role"] for c in world["clips"] for o in c.objects]
    events = [e["text"] for c in world["clips"] for e in c.events]
    assert roles.count("enter") >= 3 and roles.count("exit") >= 3, roles
    assert sum("passes in front of" in e for e in events) >= 3
    assert sum(e.endswith(" stops") for e in events) >= 3


@pytest.mark.slow
def test_quality_floors_on_32_default_clips(world):
    rejected = [(it.video_id, it.error) for it in world["items"] if not it.ok]
    assert not rejected, f"clips rejected: {rejected}"
    per_clip = world["per_clip"]
    figures = {k: round(float(np.nanmean([q[k] for q in per_clip])), 4) for k in FIGURES}
    n_objects = sum(len(it.groundings) for it in world["items"])
    print(f"\nquality on {N_CLIPS} default-world clips (seed {SEED}, {n_objects} objects): {json.dumps(figures)}")
    # Given boxes are the ground truth's own boxes: they must land exactly, and only an object dropped by a later
    # stage (an empty mask) could be missed.
    assert figures["box_iou"] > 0.999, figures
    assert figures["ground_recall"] >= 0.95, figures
    below = {k: (figures[k], floor) for k, floor in FLOORS.items() if not figures[k] >= floor}
    assert not below, f"below the floors (figure, floor): {below}; all figures: {figures}"


# --- clip_quality on worked examples -----------------------------------------------------------------------------

SANITY = WorldParams(frames=30)  # default size (TAP-Vid thresholds are at 256 x 256), a short clip


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """One 256 x 256 clip annotated at full size and with tracking frames at half size (track.max_side 128:
    tracking px = source px / 2, while boxes, masks and points stay at the grounding frames' full size), and one
    128 x 128 clip (TAP-Vid scales it up by 2)."""
    out = tmp_path_factory.mktemp("quality-sanity")
    row = write_clip(make_clip(13, 0, SANITY), out, SANITY)  # an exit and an occlusion
    small = replace(SANITY, width=128, height=128, min_size=0.3, max_size=0.4)
    row_small = write_clip(make_clip(12, 1, small), out, small)
    full = annotate_rows([row], out, AnnotateConfig())[0]
    half = annotate_rows([row], out, AnnotateConfig(max_side=128, track=TrackConfig(max_side=128)))[0]
    tiny = annotate_rows([row_small], out, AnnotateConfig())[0]
    for it in (full, half, tiny):
        assert it.ok and len(it.groundings) >= 2, it.error
    assert half.clip.source_scale("track") == 0.5 and half.clip.source_scale("ground") == 1.0
    assert full.clip.source_scale("track") == 1.0
    return {"full": full, "half": half, "tiny": tiny}


def gt_index(item, i: int, gt: GroundTruth) -> int:
    phrase = item.phrases[item.groundings[i].phrase_index].text.lower()
    (j,) = [j for j, p in enumerate(gt.phrases) if p.lower() in phrase]
    return j


def with_truth(item, shift_px: float = 0.0):
    """A copy of `item` whose tracks are the exact ground truth (tracking px), moved right by shift_px source px."""
    gt = GroundTruth.load(item.gt)
    s, idx = item.clip.source_scale("track"), item.clip.track_indices
    tracks, vis = np.zeros_like(item.tracks), np.zeros_like(item.track_vis)
    for i, g in enumerate(item.groundings):
        pos, v = gt.track_points(gt_index(item, i, gt), g.source_frame, item.points[i] / item.clip.source_scale("ground"))
        tracks[i] = (pos[:, idx] + [shift_px, 0.0]) * s
        vis[i] = v[:, idx]
    out = copy.copy(item)
    out.tracks, out.track_vis = tracks, vis
    return out


def scored_visible(item) -> tuple[int, int]:
    """(ground-truth-visible points, all points) over the scored frames (every frame but each query frame)."""
    n_vis = n_all = 0
    for i, g in enumerate(item.groundings):
        keep = np.arange(item.track_vis.shape[2]) != g.track_frame
        n_vis += int(item.track_vis[i][:, keep].sum())
        n_all += int(keep.sum()) * item.track_vis.shape[1]
    return n_vis, n_all


@pytest.mark.parametrize("which", ["full", "half", "tiny"])
def test_ground_truth_tracks_score_perfectly(annotated, which):
    q = clip_quality(with_truth(annotated[which]), AnnotateConfig())
    assert q["delta_avg"] == pytest.approx(1.0) and q["oa"] == 1.0 and q["aj"] == pytest.approx(1.0), q
    assert q["ground_recall"] == 1.0 and q["box_iou"] == pytest.approx(1.0, abs=1e-6), q


@pytest.mark.parametrize("which, expected", [
    ("full", 0.6),  # 3 px: within 4, 8, 16, not 1, 2 -> 3 / 5
    ("half", 0.6),  # 1.5 decoded px = 3 source px: the metric works at the video's own size
    ("tiny", 0.4),  # 3 px of a 128 px frame = 6 px at TAP-Vid's 256: within 8, 16 -> 2 / 5
])
def test_a_3px_shift_scores_as_worked_out_by_hand(annotated, which, expected):
    q = clip_quality(with_truth(annotated[which], shift_px=3.0), AnnotateConfig())
    # Visibility is still exact: OA 1; every visible point is a TP beyond the shift and an FP below it.
    assert q["delta_avg"] == pytest.approx(expected) and q["aj"] == pytest.approx(expected), q
    assert q["oa"] == 1.0, q


def test_predicting_everything_occluded(annotated):
    item = with_truth(annotated["full"])
    n_vis, n_all = scored_visible(item)
    assert 0 < n_vis < n_all
    item.track_vis = np.zeros_like(item.track_vis)
    q = clip_quality(item, AnnotateConfig())
    assert q["oa"] == pytest.approx(1 - n_vis / n_all)  # right exactly where the truth says occluded
    assert q["aj"] == 0.0 and q["delta_avg"] == pytest.approx(1.0)  # delta ignores predicted visibility


def test_mask_iou_and_recall_by_hand(annotated):
    item = copy.copy(annotated["full"])
    gt = GroundTruth.load(item.gt)
    masks = [gt.mask(gt_index(item, i, gt), g.source_frame) for i, g in enumerate(item.groundings)]
    item.masks = masks
    assert clip_quality(item, AnnotateConfig())["mask_iou"] == 1.0
    # Grow mask 0 by a block of background of known area: IoU = |M| / (|M| + area of the block).
    grown = masks[0].copy()
    ys, xs = np.nonzero(~cv2.dilate(masks[0].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool))
    block = np.zeros_like(grown)
    block[ys[:50], xs[:50]] = True  # 50 pixels off the object
    assert not (block & masks[0]).any()
    item.masks = [grown | block] + masks[1:]
    n = masks[0].sum()
    expected = (n / (n + 50) + (len(masks) - 1)) / len(masks)
    assert clip_quality(item, AnnotateConfig())["mask_iou"] == pytest.approx(expected)
    # A box moved by its own width misses its object (IoU 0): recall loses exactly that object.
    item.groundings = [copy.copy(g) for g in item.groundings]
    b = np.asarray(item.groundings[0].box, float)
    item.groundings[0].box = b + [b[2] - b[0], 0, b[2] - b[0], 0]
    q = clip_quality(item, AnnotateConfig())
    assert q["ground_recall"] == pytest.approx(1 - 1 / len(gt.phrases)), q
    assert q["box_iou"] == pytest.approx((len(item.groundings) - 1) / len(item.groundings)), q
