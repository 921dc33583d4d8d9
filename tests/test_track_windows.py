"""Windowed tracking (annotate.track.windows): the spans, the handover and stitching rule, Lucas-Kanade windowed vs
in one call, and the real CoTracker3 (random weights) run window by window."""

from __future__ import annotations

import time

import numpy as np
import pytest

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.frames import LazyFrames
from annotate.frames import inside_frame
from annotate.track import make_tracker, track_lk
from annotate.track.windows import check_windows, home_windows, track_in_windows, window_spans
from tests.annotate_helpers import POINTS_U, Scene, gray_rgb, track_item

# ---------------------------------------------------------------------------------------------------------------
# Spans and homes


def test_window_spans_step_by_window_minus_overlap_until_the_end():
    assert window_spans(60, 20, 6) == [(0, 20), (14, 34), (28, 48), (42, 60)]
    assert window_spans(20, 20, 6) == [(0, 20)]
    assert window_spans(21, 20, 6) == [(0, 20), (14, 21)]
    assert window_spans(34, 20, 6) == [(0, 20), (14, 34)]


def test_home_window_is_the_one_whose_middle_is_nearest():
    spans = window_spans(60, 20, 6)  # middles 9.5, 23.5, 37.5, 50.5
    assert home_windows(spans, np.array([0, 16, 17, 30, 31, 45, 59])).tolist() == [0, 0, 1, 1, 2, 3, 3]


def test_window_settings_are_checked():
    check_windows(0, 0)  # the whole clip in one call: overlap unused
    check_windows(60, 12)
    with pytest.raises(ConfigError, match="track.window: must be >= 0"):
        check_windows(-1, 0)
    for overlap in (0, 60):
        with pytest.raises(ConfigError, match=f"track.overlap: .* below track.window=60 .*got {overlap}"):
            check_windows(60, overlap)
    cfg = AnnotateConfig()
    cfg.track.window, cfg.track.overlap = 10, 10
    with pytest.raises(ConfigError, match="track.overlap"):
        make_tracker(cfg)


# ---------------------------------------------------------------------------------------------------------------
# The stitching rule, with a tracker whose answer is known


class LinearTracker:
    """Moves each query by `velocity` px per frame from its query frame. hidden: [(clip frames, xy at clip frame
    0)]: the point that starts there is not visible on those frames. Frame t of the clip carries t in its pixels,
    so each call knows which window it got."""

    def __init__(self, velocity=(1.0, 0.5), hidden=()):
        self.velocity = np.asarray(velocity)
        self.hidden = hidden
        self.calls = []

    def __call__(self, frames, points, query_frames):
        a = int(frames[0, 0, 0, 0])
        t = np.arange(len(frames))
        self.calls.append(dict(span=(a, a + len(frames)), points=points.copy(), query_frames=query_frames.copy()))
        tracks = points[:, :, None, :] + self.velocity * (t[None, None, :, None] - query_frames[:, None, None, None])
        vis = np.ones(tracks.shape[:3], dtype=bool)
        for frames_hidden, xy0 in self.hidden:  # the motion is one for all: a point is known by its start
            here = np.isclose(tracks - self.velocity * (a + t)[None, None, :, None], xy0).all(axis=-1)
            for f in frames_hidden:
                if a <= f < a + len(frames):
                    vis[..., f - a] &= ~here[..., f - a]
        return tracks, vis


def _clip_frames(num_frames):
    return np.broadcast_to(np.arange(num_frames, dtype=np.uint8)[:, None, None, None], (num_frames, 4, 4, 3))


def _counted(frames):
    """A LazyFrames over `frames` that records each read."""
    reads = []

    def read(positions):
        reads.append((int(positions[0]), int(positions[-1]) + 1))
        return frames[positions]

    return LazyFrames(frames.shape, read), reads


def test_stitched_tracks_follow_one_motion_through_every_window():
    num_frames, velocity = 60, np.array([1.0, 0.5])
    at0 = np.array([[[5.0, 6.0], [7.0, 8.0]], [[20.0, 3.0], [1.0, 1.0]], [[0.0, 9.0], [4.0, 4.0]]])
    query_frames = np.array([2, 30, 59])  # start, middle (homed in window 1), end (backward only)
    points = at0 + velocity * query_frames[:, None, None]
    tracker = LinearTracker(velocity)
    frames, reads = _counted(_clip_frames(num_frames))
    tracks, vis = track_in_windows(tracker, frames, points, query_frames, window=20, overlap=6)
    want = at0[:, :, None, :] + velocity * np.arange(num_frames)[None, None, :, None]
    np.testing.assert_allclose(tracks, want, atol=1e-9)
    assert vis.all()
    for n, q in enumerate(query_frames):
        assert np.array_equal(tracks[n, :, q], points[n])  # the query itself, exactly
    # Forward through all 4 windows once, backward through windows 2, 1, 0 (objects homed in 1 and 3).
    assert reads == [(0, 20), (14, 34), (28, 48), (42, 60), (28, 48), (14, 34), (0, 20)]
    assert all(b - a <= 20 for a, b in reads)
    # Handover at the overlap frame farthest from the query where the point is visible: going forward the
    # window's last frame (local frame 5 of the next window), going backward the next window's first frame
    # (local frame 14 of the previous one). Home windows get the real queries (local 2, 16, 17).
    assert [c["query_frames"].tolist() for c in tracker.calls] == [
        [2], [16, 5], [5, 5], [17, 5, 5], [14], [14], [14, 14]]


def test_a_point_hidden_over_a_whole_overlap_stays_hidden_and_its_siblings_go_on():
    velocity = np.array([1.0, 0.0])
    at0 = np.array([[[5.0, 6.0], [7.0, 8.0]]])
    # Point 1 is hidden on frames 10-21: all of the first overlap (frames 14-19). Point 0 is hidden on 15-17 only.
    tracker = LinearTracker(velocity, hidden=[(range(10, 22), at0[0, 1]), (range(15, 18), at0[0, 0])])
    points = at0 + velocity * 2
    tracks, vis = track_in_windows(tracker, _clip_frames(60), points, np.array([2]), window=20, overlap=6)
    np.testing.assert_allclose(tracks[0], at0[0][:, None] + velocity * np.arange(60)[:, None], atol=1e-9)
    assert vis[0, 0].tolist() == [f not in range(15, 18) for f in range(60)]
    # Not visible from frame 10 on: handed over where hidden (frame 14, the overlap frame nearest its query), a
    # query there would follow what hides it, so the later windows do not make it visible again.
    assert vis[0, 1].tolist() == [f < 10 for f in range(60)]
    # The object's two points were handed over at different frames: two queries in window 1, K = 2 points each
    # (the backends take K points per object: a query of one point repeats it).
    window1 = tracker.calls[1]
    assert window1["query_frames"].tolist() == [0, 5] and window1["points"].shape == (2, 2, 2)


# ---------------------------------------------------------------------------------------------------------------
# Lucas-Kanade: windowed vs one call


def _lk_cfg(window, overlap=6):
    cfg = AnnotateConfig()
    cfg.track.window, cfg.track.overlap = window, overlap
    return cfg


def test_windowed_lk_matches_one_call_on_a_moving_texture():
    # Tolerance: inside one window LK is anchored to its query frame's look; a handover re-anchors it at the
    # tracked position, so each handover can carry that position's error (under 0.1 px on this scene) into the
    # next window. Three handovers forward, two backward: within 0.25 px of the one-call tracks (0.023 px measured)
    # and 0.5 px of the truth.
    scene = Scene(num_frames=60, velocity=(1.0, 0.5), start=(10.0, 20.0))
    truth = scene.truth(POINTS_U)
    query_frames = [0, 30, 59]
    items = []
    for window in (0, 20):
        item = track_item(scene.frames, np.stack([truth[:, q] for q in query_frames]), query_frames)
        make_tracker(_lk_cfg(window)).process([item])
        assert item.ok, item.error
        items.append(item)
    one, windowed = items
    assert windowed.tracks.shape == (3, 3, 60, 2) and windowed.tracks.dtype == np.float32
    assert windowed.track_vis.dtype == bool
    for n, q in enumerate(query_frames):
        np.testing.assert_array_equal(windowed.tracks[n, :, q], one.tracks[n, :, q])  # queries kept exactly
    assert windowed.track_vis.all() and one.track_vis.all()
    diff = np.linalg.norm(windowed.tracks - one.tracks, axis=-1)
    err = np.linalg.norm(windowed.tracks - truth[None], axis=-1)
    print(f"windowed vs one call: max {diff.max():.3f} px, mean {diff.mean():.3f} px; vs truth max {err.max():.3f}")
    assert diff.max() < 0.25 and err.max() < 0.5


def test_lk_windowed_on_one_window_is_the_one_call_result_byte_for_byte():
    scene = Scene(num_frames=30)
    truth = scene.truth(POINTS_U)
    results = []
    for window in (0, 30, 200):
        item = track_item(scene.frames, truth[None, :, 12], [12])
        make_tracker(_lk_cfg(window)).process([item])
        results.append((item.tracks.tobytes(), item.track_vis.tobytes()))
    assert results[0] == results[1] == results[2]


def test_windowed_lk_on_the_synthetic_world_keeps_its_quality():
    # 6 clips of 100 frames in windows of 30 (overlap 8): 5 windows, 4 handovers. Objects are grounded at their
    # own frame, the middle or the end (where big enough there), so the backward pass carries some of them.
    # Windowed LK loses a point for good when it is hidden over a whole overlap (one-call LK may re-acquire it),
    # so visibility can only drop a little; positions move by handover errors. Floors: within 0.03 of one call.
    from annotate.metrics import tapvid_metrics
    from annotate.points import sample_points
    from annotate.synthetic import make_clip

    scores = {0: [], 30: []}
    for index in range(6):
        clip = make_clip(0, index)
        gt = clip.gt
        ground = []
        for o in range(gt.n_objects):
            wish = [clip.objects[o]["ground_frame"], 50, 99][o % 3]
            ground.append(wish if gt.mask(o, wish).sum() >= 300 else clip.objects[o]["ground_frame"])
        ground = np.array(ground)
        rng = np.random.default_rng(index)
        points = np.stack([sample_points(gt.mask(o, ground[o]), 3, rng) for o in range(gt.n_objects)])
        truth = [gt.track_points(o, ground[o], points[o]) for o in range(gt.n_objects)]
        gray = gray_rgb(clip.frames)
        for window in scores:
            track = _GrayLK(gray.shape)
            if window:
                tracks, vis = track_in_windows(track, gray, points, ground, window=window, overlap=8)
            else:
                tracks, vis = track(gray, points, ground)
            np.testing.assert_array_equal(tracks[np.arange(len(ground)), :, ground], points)
            t = tracks.shape[2]
            scores[window].append(tapvid_metrics(
                tracks.reshape(-1, t, 2), vis.reshape(-1, t), np.concatenate([p for p, _ in truth]),
                np.concatenate([v for _, v in truth]), np.repeat(ground, 3), size=(gt.width, gt.height)))
    mean = {w: {k: float(np.mean([r[k] for r in s])) for k in ("delta_avg", "oa", "aj")} for w, s in scores.items()}
    print(f"synthetic world, one call vs windows of 30: {mean}")
    for key in ("delta_avg", "oa", "aj"):
        assert mean[30][key] >= mean[0][key] - 0.03, (key, mean)


class _GrayLK:
    """track_lk on gray frames with the inside-frame rule, as TrackStage hands windows to a backend."""

    def __init__(self, shape):
        self.height, self.width = shape[1:3]

    def __call__(self, gray, points, query_frames):
        tracks, vis = track_lk(gray, points, query_frames)
        return tracks, vis & inside_frame(tracks, self.width, self.height)


# ---------------------------------------------------------------------------------------------------------------
# The real CoTracker3, random weights


class RecordingPredictor:
    """Passes calls to the real predictor and records the number of frames of each."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.frames = []

    def __call__(self, video, **kwargs):
        self.frames.append(int(video.shape[1]))
        return self.predictor(video, **kwargs)


@pytest.mark.slow
def test_cotracker_real_package_windowed_with_random_weights():
    # Random weights track nothing in particular: this checks the plumbing (shapes, dtypes, queries at their
    # frames, windows no longer than track.window), not the tracks.
    pytest.importorskip("cotracker")
    import torch
    from cotracker.predictor import CoTrackerPredictor

    torch.manual_seed(0)
    predictor = CoTrackerPredictor(checkpoint=None)
    predictor.interp_shape = (96, 128)  # it resizes every frame to this (384x512 by default): small for a CPU test
    recording = RecordingPredictor(predictor)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    points = np.array([[[10.5, 20.5], [30.25, 5.0], [63.5, 47.5]], [[0.5, 0.5], [2.0, 3.0], [40.0, 30.0]],
                       [[12.0, 12.0], [50.0, 40.0], [33.3, 22.2]]])
    query_frames = [1, 9, 19]
    cfg = AnnotateConfig()
    cfg.track.backend, cfg.track.device = "cotracker", "cpu"
    cfg.track.window, cfg.track.overlap = 8, 3  # spans 0-8, 5-13, 10-18, 15-20
    item = track_item(frames, points, query_frames)
    t0 = time.perf_counter()
    make_tracker(cfg, predictor=recording).process([item])
    seconds = time.perf_counter() - t0
    assert item.ok, item.error
    print(f"CoTracker3 (random weights, 96x128) windowed over 20 frames: {len(recording.frames)} calls of "
          f"{recording.frames} frames, {seconds:.1f} s")
    assert item.tracks.shape == (3, 3, 20, 2) and item.tracks.dtype == np.float32
    assert item.track_vis.shape == (3, 3, 20) and item.track_vis.dtype == bool
    assert np.isfinite(item.tracks).all()
    assert recording.frames and max(recording.frames) <= 8
    assert len(recording.frames) <= 2 * 4  # forward once, backward at most once more per window
    for n, q in enumerate(query_frames):
        np.testing.assert_allclose(item.tracks[n, :, q], points[n], atol=1e-3)
        assert item.track_vis[n, :, q].all()


def test_track_stage_reads_a_lazy_source_window_by_window():
    # The stage on a lazy source (as decode gives for a clip longer than one window) gets the array's tracks,
    # reading each window once going forward and once more going backward where needed.
    scene = Scene(num_frames=60, velocity=(1.0, 0.5), start=(10.0, 20.0))
    truth = scene.truth(POINTS_U)
    results = []
    for lazy in (False, True):
        item = track_item(scene.frames, np.stack([truth[:, 5], truth[:, 45]]), [5, 45])
        if lazy:
            item.clip.track_frames, reads = _counted(scene.frames)
        make_tracker(_lk_cfg(20)).process([item])
        assert item.ok, item.error
        results.append((item.tracks, item.track_vis))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert reads == [(0, 20), (14, 34), (28, 48), (42, 60), (28, 48), (14, 34), (0, 20)]
    # A lazy source that fits one window is read whole, once.
    item = track_item(scene.frames[:20], truth[None, :, 5], [5])
    item.clip.track_frames, reads = _counted(scene.frames[:20])
    make_tracker(_lk_cfg(20)).process([item])
    assert item.ok and reads == [(0, 20)]
