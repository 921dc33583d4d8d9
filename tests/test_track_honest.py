"""Tracks that never invent: a lost point moves only with its object's still-followed points, else stays where it
was last known, and no position of any tracker lies further outside the frame than its object's own size."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.config import AnnotateConfig, TrackConfig
from annotate.frames import inside_frame
from annotate.track import TrackStage, make_tracker, track_lk
from annotate.synthetic import WorldParams, make_clip
from pipelines.synth import write_clip
from tests.annotate_helpers import annotate_rows
from tests.annotate_helpers import POINTS_U, Scene, gray, track_item


def test_points_lost_with_their_whole_object_stay_where_they_were_last_known():
    """The square moves 4 px a frame; from frame 12 on the video is one flat grey, so every point is lost at once.
    The reported positions then hold the last followed ones (a velocity guess would run 4 px a frame away)."""
    scene = Scene(num_frames=30, velocity=(4.0, 0.0), start=(10.0, 40.0))
    frames = scene.frames.copy()
    frames[12:] = 128
    truth = scene.truth(POINTS_U)
    tracks, vis = track_lk(gray(frames), truth[None, :, 5], np.array([5]))
    assert vis[0, :, :12].all() and not vis[0, :, 12:].any()
    last = tracks[0, :, 11]
    np.testing.assert_allclose(last, truth[:, 11], atol=1.0)
    for f in range(12, 30):
        np.testing.assert_allclose(tracks[0, :, f], last, atol=1e-9)


def test_a_lost_point_follows_its_still_followed_siblings():
    """One point's patch is blanked from frame 8 on (lost); its siblings are followed, and it moves with them."""
    scene = Scene(num_frames=20, velocity=(2.0, 1.0))
    truth = scene.truth(POINTS_U)
    frames = scene.frames.copy()
    for f in range(8, 20):
        x, y = np.rint(truth[0, f] - 0.5).astype(int)
        frames[f, y - 5:y + 6, x - 5:x + 6] = 255
    tracks, vis = track_lk(gray(frames), truth[None, :, 0], np.array([0]))
    assert not vis[0, 0, 10:].any() and vis[0, 1:, 10:].all()
    # Moved as the object moved: within a couple of pixels of where it truly is, though unseen.
    assert np.linalg.norm(tracks[0, 0, 10:] - truth[0, 10:], axis=-1).max() < 3.0


class WildTracker(TrackStage):
    """A tracker that claims every point runs far out of the frame (what an unconstrained model may say of an
    invisible query)."""

    def track(self, frames, points, query_frames):
        f = len(frames)
        n, k = points.shape[:2]
        tracks = np.repeat(points[:, :, None], f, axis=2).copy()
        tracks[:, :, 1:] += np.array([1e4, -5e3]) * np.linspace(0, 1, f - 1)[None, None, :, None]
        return tracks, np.zeros((n, k, f), bool)


@pytest.mark.parametrize("window", [0, 6], ids=["one-call", "windows"])
def test_no_tracker_puts_a_point_further_outside_than_its_object(window):
    scene = Scene(num_frames=20)
    truth = scene.truth(POINTS_U)
    item = track_item(scene.frames, truth[None, :, 0], [0])
    item.groundings[0].box = np.array([10.0, 30.0, 42.0, 62.0])  # 32 x 32
    WildTracker(AnnotateConfig(track=TrackConfig(window=window, overlap=2))).process([item])
    assert item.ok, item.error
    x, y = item.tracks[0, ..., 0], item.tracks[0, ..., 1]
    assert x.max() == pytest.approx(128 + 32) and y.min() == pytest.approx(-32)
    assert not item.track_vis.any()


def outside_by(tracks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 2) -> (...) how far each position lies outside the frame, 0 inside."""
    dx = np.maximum(0, np.maximum(-tracks[..., 0], tracks[..., 0] - width))
    dy = np.maximum(0, np.maximum(-tracks[..., 1], tracks[..., 1] - height))
    return np.stack([dx, dy], axis=-1)


@pytest.mark.slow
def test_objects_leaving_the_frame_stay_within_their_size_of_it(tmp_path):
    """Synthetic clips with exits and fast motion, the embedded chain: every position of every point of every object
    is within the object's box size of the frame, and points that left are not visible."""
    params = WorldParams(frames=40, p_exit=1.0, min_speed=3.0, max_speed=6.0)
    rows = [write_clip(make_clip(21, i, params), tmp_path, params) for i in range(3)]
    items = annotate_rows(rows, tmp_path, AnnotateConfig())
    checked = 0
    for item in items:
        assert item.ok, item.error
        w, h = item.clip.size
        for i, g in enumerate(item.groundings):
            size = np.abs(np.diff(np.asarray(g.box).reshape(2, 2), axis=0))[0]  # the world is decoded at full size
            assert np.all(outside_by(item.tracks[i], w, h) <= size + 1e-3), (item.video_id, i)
            assert not item.track_vis[i][~inside_frame(item.tracks[i], w, h)].any()
            checked += 1
    assert checked >= 3
