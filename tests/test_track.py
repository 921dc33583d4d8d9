"""Track stage: reading samples off tracks, Lucas-Kanade on generated clips, the CoTracker adapter (double + real)."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.frames import inside_frame
from annotate.track import make_tracker, read_off_samples, track_lk
from tests.annotate_helpers import POINTS_U, Scene, gray, gray_rgb, track_item

# ---------------------------------------------------------------------------------------------------------------
# read_off_samples


def test_read_off_samples_exact_hits_interpolation_and_visibility():
    # Tracking frames at t = 0, 0.5, 1.0 s; samples at 0, 0.25, 0.5, 0.75, 1.0 s.
    tracks = np.zeros((1, 2, 3, 2))
    tracks[0, 0] = [[0, 0], [10, 20], [20, 40]]
    tracks[0, 1] = [[5, 5], [7, 9], [5, 5]]
    vis = np.array([[[True, True, False], [True, False, True]]])
    traj, v = read_off_samples(tracks, vis, [0.0, 0.5, 1.0], [0.0, 0.25, 0.5 + 1e-9, 0.75, 1.0])
    assert traj.shape == (1, 2, 5, 2) and v.shape == (1, 2, 5) and traj.dtype == np.float32
    # Point 0: halfway between (0, 0) and (10, 20) is (5, 10); 0.5 s is tracking frame 1 exactly.
    np.testing.assert_allclose(traj[0, 0], [[0, 0], [5, 10], [10, 20], [15, 30], [20, 40]], atol=1e-5)
    # Visible between two frames only if both are; exact hits take that frame's own visibility.
    assert v[0, 0].tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(traj[0, 1], [[5, 5], [6, 7], [7, 9], [6, 7], [5, 5]], atol=1e-5)
    assert v[0, 1].tolist() == [True, False, False, False, True]


def test_read_off_samples_outside_frame_is_not_visible_and_ends_hold():
    tracks = np.array([[[[10.0, 5.0], [30.0, 5.0]]]])  # (1, 1, 2, 2): moves right out of a 25 px wide frame
    vis = np.ones((1, 1, 2), dtype=bool)
    traj, v = read_off_samples(tracks, vis, [1.0, 2.0], [0.5, 1.0, 1.7, 1.75, 2.5], size=(25, 10))
    # Before the first / after the last tracking frame the end value holds.
    np.testing.assert_allclose(traj[0, 0, :, 0], [10, 10, 24, 25, 30], atol=1e-5)
    # x = 24 lies on the last column (visible); x = 25 is the frame's right edge, outside.
    assert v[0, 0].tolist() == [True, True, True, False, False]
    # Without a size the tracker's visibility stands.
    assert read_off_samples(tracks, vis, [1.0, 2.0], [2.5])[1].all()


def test_read_off_samples_rejects_bad_input():
    with pytest.raises(ValueError, match="increasing"):
        read_off_samples(np.zeros((1, 1, 2, 2)), np.ones((1, 1, 2), bool), [1.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="disagree"):
        read_off_samples(np.zeros((1, 1, 2, 2)), np.ones((1, 1, 3), bool), [0.0, 1.0], [1.0])


# ---------------------------------------------------------------------------------------------------------------
# Lucas-Kanade


def test_lk_follows_a_moving_texture_forward_and_backward_within_a_pixel():
    scene = Scene(num_frames=30)
    truth = scene.truth(POINTS_U)  # (3, 30, 2)
    q = 15  # a middle grounding frame: half the clip is tracked backward
    tracks, vis = track_lk(gray(scene.frames), truth[None, :, q], np.array([q]))
    assert tracks.shape == (1, 3, 30, 2) and vis.shape == (1, 3, 30)
    err = np.linalg.norm(tracks[0] - truth, axis=-1)
    assert err[:, q].max() == 0.0  # the query is its own answer
    assert err.max() < 1.0, f"max error {err.max():.2f} px"
    assert vis.all()


def test_lk_does_not_drift_over_a_long_clip():
    # 100 frames from a middle query: frame-to-frame errors would add up (0.65 px here without the query-frame
    # refinement); anchored to the query frame's look they stay near the noise floor.
    scene = Scene(num_frames=100, velocity=(0.8, 0.3), start=(10.0, 20.0))
    truth = scene.truth(POINTS_U)
    tracks, vis = track_lk(gray(scene.frames), truth[None, :, 50], np.array([50]))
    err = np.linalg.norm(tracks[0] - truth, axis=-1)
    assert vis.all() and err.max() < 0.35, f"max error {err.max():.2f} px"


def test_lk_follows_a_plain_object_whose_patches_are_flat():
    # Inside a plain square a 9 px patch is only noise, so correlation means nothing there: the appearance check
    # must fall back to brightness, or every point is dropped at the first step (35 px off by the end). Points
    # 5-6 px inside the corners, so LK's 21 px window sees the square's edges; along an edge LK is loosely held
    # (the aperture problem), hence a few px of error.
    scene = Scene(num_frames=30, flat=True)
    truth = scene.truth(np.array([[5.5, 5.5], [26.0, 6.0], [6.0, 25.5]]))
    tracks, vis = track_lk(gray(scene.frames), truth[None, :, 15], np.array([15]))
    err = np.linalg.norm(tracks[0] - truth, axis=-1)
    assert vis.mean() > 0.95 and err.max() < 4.0, (vis.mean(), err.max())


@pytest.mark.parametrize("bar, query", [
    ((150.0, -5.0), 2),  # the bar crosses the square fast, tracked forward from the first frames
    ((-20.0, 3.0), 39),  # the bar overtakes the square slowly (2 px/frame): frame-to-frame LK alone would follow it
])
def test_lk_marks_covered_points_not_visible_and_reacquires_them(bar, query):
    scene = Scene(num_frames=40, occluder=bar, velocity=(1.0, 0.5))
    truth = scene.truth(POINTS_U)
    depth = scene.bar_distance(truth)
    assert (depth[:, query] < -10).all()
    item = track_item(scene.frames, truth[None, :, query], [query])
    make_tracker(AnnotateConfig()).process([item])
    assert item.ok, item.error
    vis, err = item.track_vis[0], np.linalg.norm(item.tracks[0] - truth, axis=-1)
    frames = np.arange(40)
    for k in range(3):
        covered = np.flatnonzero(depth[k] > 0)
        assert len(covered) >= 4, "the scene must cover every point for a while"
        # Not visible once the bar is a few px over the point, and for as long as it stays there.
        deep = depth[k] > 3
        assert not vis[k, deep].any(), f"point {k} visible under the bar at frames {np.flatnonzero(deep & vis[k])}"
        # Visible and accurate on the query's side of the occlusion while the bar is 8 px away or more ...
        clear = depth[k] < -8
        near = clear & ((frames < covered[0]) if query < covered[0] else (frames > covered[-1]))
        assert vis[k, near].all() and err[k, near].max() < 1.0
        # ... and found again, in place, on the other side once the bar is 8 px past it (1 to 4 frames).
        far = clear & ((frames > covered[-1]) if query < covered[0] else (frames < covered[0]))
        assert far.sum() >= 3
        assert vis[k, far].all(), f"point {k} not re-acquired: {vis[k].astype(int)}"
        assert err[k, far].max() < 1.5


def test_lk_points_leaving_the_frame_are_not_visible():
    scene = Scene(num_frames=30, velocity=(4.0, 0.0), start=(10.0, 40.0))
    truth = scene.truth(POINTS_U)
    item = track_item(scene.frames, truth[None, :, 5], [5])
    make_tracker(AnnotateConfig()).process([item])
    vis = item.track_vis[0]
    outside = ~inside_frame(truth, 128, 128)
    assert outside.any(axis=1).all(), "every point must leave the frame"
    assert not vis[outside].any()
    # Still followed while well inside (10 px from the edge).
    well_inside = truth[..., 0] < 118
    assert vis[well_inside].mean() > 0.95
    err = np.linalg.norm(item.tracks[0] - truth, axis=-1)
    assert err[well_inside & vis].max() < 1.0


def test_lk_stage_tracks_objects_grounded_on_different_frames():
    scene = Scene(num_frames=20)
    t1 = scene.truth(POINTS_U)
    t2 = scene.truth(POINTS_U[::-1] + 2.0)
    item = track_item(scene.frames, np.stack([t1[:, 3], t2[:, 17]]), [3, 17])
    stage = make_tracker(AnnotateConfig())
    stage.process([item])
    assert item.ok, item.error
    assert item.tracks.shape == (2, 3, 20, 2) and item.tracks.dtype == np.float32
    assert item.track_vis.shape == (2, 3, 20) and item.track_vis.dtype == bool
    np.testing.assert_allclose(item.tracks[0, :, 3], t1[:, 3], atol=1e-4)
    np.testing.assert_allclose(item.tracks[1, :, 17], t2[:, 17], atol=1e-4)
    assert np.linalg.norm(item.tracks - np.stack([t1, t2]), axis=-1).max() < 1.0
    assert "track" in item.timings and item.versions["track"].startswith("lk/opencv-")


def test_track_stage_rejects_items_without_points():
    scene = Scene(num_frames=5)
    item = track_item(scene.frames, np.zeros((1, 3, 2)), [0])
    item.points = None
    make_tracker(AnnotateConfig()).process([item])
    assert item.error is not None and item.error[0] == "track" and "points" in item.error[1]


def test_unknown_backend_names_the_key():
    cfg = AnnotateConfig()
    cfg.track.backend = "tapir"
    with pytest.raises(ConfigError, match="track.backend"):
        make_tracker(cfg)


# ---------------------------------------------------------------------------------------------------------------
# CoTracker adapter


class FakeCoTrackerPredictor:
    """Mirrors cotracker.predictor.CoTrackerPredictor.forward (facebookresearch/co-tracker, CoTracker3):

    video (B, T, 3, H, W) float 0-255; queries (B, N, 3) as (t, x, y) with pixel centres on integers;
    returns tracks (B, T, N, 2) and visibility (B, T, N) bool, the query frame holding the query itself.
    This double moves each query by `motion` px per frame from its own frame, and hides `hidden` frames.
    """

    def __init__(self, motion=(1.5, -0.5), hidden=()):
        self.motion = motion
        self.hidden = set(hidden)
        self.calls = []

    def __call__(self, video, queries=None, segm_mask=None, grid_size=0, grid_query_frame=0,
                 backward_tracking=False):
        import torch

        assert isinstance(video, torch.Tensor) and video.dtype == torch.float32 and video.ndim == 5
        b, t, c, h, w = video.shape
        assert b == 1 and c == 3
        assert float(video.min()) >= 0 and float(video.max()) <= 255 and float(video.max()) > 1, "expects 0-255"
        assert queries is not None and queries.dtype == torch.float32 and queries.shape[0] == b
        assert queries.shape[2] == 3 and queries.device == video.device
        q = queries[0].numpy()
        assert np.all(q[:, 0] == np.round(q[:, 0])) and np.all((q[:, 0] >= 0) & (q[:, 0] < t))
        assert np.all((q[:, 1] >= -0.5) & (q[:, 1] <= w - 0.5) & (q[:, 2] >= -0.5) & (q[:, 2] <= h - 0.5))
        self.calls.append(dict(shape=tuple(video.shape), queries=q.copy(), frame0=video[0, 0].numpy().copy(),
                               backward_tracking=backward_tracking))
        frames = np.arange(t, dtype=np.float32)[:, None]
        tracks = np.stack([q[:, 1] + self.motion[0] * (frames - q[:, 0]),
                           q[:, 2] + self.motion[1] * (frames - q[:, 0])], axis=-1)  # (T, N, 2)
        vis = np.ones((t, len(q)), dtype=bool)
        for f in self.hidden:
            vis[f] = False
        vis[q[:, 0].astype(int), np.arange(len(q))] = True
        return torch.from_numpy(tracks[None]), torch.from_numpy(vis[None])


def _cotracker_cfg(weights=None):
    cfg = AnnotateConfig()
    cfg.track.backend = "cotracker"
    cfg.track.weights = weights
    cfg.track.device = "cpu"  # where the injected predictors are (auto would pick a GPU when there is one)
    return cfg


def test_resolve_device_names_and_auto(monkeypatch):
    import torch

    from annotate.device import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [resolve_device(d) for d in ("cpu", "cuda", "cuda:1", "mps", "CUDA:0")] == \
        ["cpu", "cuda", "cuda:1", "mps", "cuda:0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"  # in a Ray GPU actor: the GPU Ray assigned (CUDA_VISIBLE_DEVICES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(ConfigError, match="device: unknown device"):
            resolve_device(bad)


def test_cotracker_asks_for_a_gpu_unless_on_the_cpu():
    cfg = _cotracker_cfg()
    gpus = {}
    for device in ("auto", "cuda", "cuda:1", "cpu"):
        cfg.track.device = device
        gpus[device] = make_tracker(cfg).resources().num_gpus
    assert gpus == {"auto": 1.0, "cuda": 1.0, "cuda:1": 1.0, "cpu": 0.0}
    assert AnnotateConfig().track.device == "auto"


def test_cotracker_adapter_sends_txy_queries_and_maps_tracks_back():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 40, 60, 3), dtype=np.uint8)
    points = np.array([[[10.5, 20.5], [30.25, 5.0], [59.0, 39.5]],
                       [[1.0, 1.0], [2.0, 3.0], [4.0, 5.0]]])
    fake = FakeCoTrackerPredictor(motion=(1.5, -0.5), hidden=[9])
    item = track_item(frames, points, [7, 2])
    make_tracker(_cotracker_cfg(), predictor=fake).process([item])
    assert item.ok, item.error
    (call,) = fake.calls
    assert call["shape"] == (1, 12, 3, 40, 60)
    assert call["backward_tracking"] is False  # one pass: the offline model sees frames before the query too
    np.testing.assert_array_equal(call["frame0"], frames[0].transpose(2, 0, 1).astype(np.float32))
    # One query per point, object by object, as (t, x, y) with CoTracker's centres-on-integers convention.
    expected_q = np.array([[7, 10.0, 20.0], [7, 29.75, 4.5], [7, 58.5, 39.0],
                           [2, 0.5, 0.5], [2, 1.5, 2.5], [2, 3.5, 4.5]], dtype=np.float32)
    np.testing.assert_allclose(call["queries"], expected_q)
    assert item.tracks.shape == (2, 3, 12, 2) and item.track_vis.shape == (2, 3, 12)
    # Back in continuous coords: the query frame gives the point itself, other frames move by the known motion.
    for n, g in enumerate([7, 2]):
        f = np.arange(12)[None, :, None]
        want = points[n][:, None, :] + np.array([1.5, -0.5]) * (f - g)
        np.testing.assert_allclose(item.tracks[n], want, atol=1e-4)
    vis = item.track_vis
    assert not vis[:, :, 9].any()  # the double hid frame 9
    # Object 0 moves right from x = 59 at frame 7: at frame 8 it is at 60.5, outside the 60 px frame.
    assert vis[0, 2, 7] and not vis[0, 2, 8]
    # Object 1 moves up from y = 1 at frame 2: y < 0 from frame 5 on.
    assert vis[1, 0, 4] and not vis[1, 0, 5]


def test_cotracker_reversed_pass_and_working_size_are_config_keys():
    frames = np.random.default_rng(0).integers(0, 256, (6, 40, 60, 3), dtype=np.uint8)
    cfg = _cotracker_cfg()
    cfg.track.backward_pass = True
    cfg.track.interp_shape = [96, 128]
    fake = FakeCoTrackerPredictor()
    make_tracker(cfg, predictor=fake).process([track_item(frames, np.ones((1, 3, 2)), [3])])
    assert fake.calls[0]["backward_tracking"] is True and fake.interp_shape == (96, 128)
    cfg.track.interp_shape = [90, 128]  # a setting no clip can use: refused when the stage is set up
    with pytest.raises(ConfigError, match="track.interp_shape"):
        make_tracker(cfg, predictor=FakeCoTrackerPredictor()).setup()


def test_cotracker_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cotracker", None)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", None)
    stage = make_tracker(_cotracker_cfg("ckpt.pth"))
    with pytest.raises(ConfigError, match=r"make cotracker COTRACKER_SRC=DIR") as info:
        stage.setup()
    assert "track.backend" in str(info.value) and "\n" not in str(info.value)


def test_cotracker_missing_weights_names_the_key(monkeypatch, tmp_path):
    made = []
    package = types.ModuleType("cotracker")
    module = types.ModuleType("cotracker.predictor")

    class CoTrackerPredictor:
        def __init__(self, checkpoint=None, offline=True, v2=False, window_len=60):
            made.append(checkpoint)

        def to(self, device):
            return self

        def eval(self):
            return self

    module.CoTrackerPredictor = CoTrackerPredictor
    monkeypatch.setitem(sys.modules, "cotracker", package)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", module)
    for weights in (None, str(tmp_path / "absent.pth")):
        with pytest.raises(ConfigError, match="track.weights"):
            make_tracker(_cotracker_cfg(weights)).setup()
    assert made == []
    ckpt = tmp_path / "scaled_offline.pth"
    ckpt.write_bytes(b"")
    make_tracker(_cotracker_cfg(str(ckpt))).setup()
    assert made == [str(ckpt)]


@pytest.mark.slow
def test_cotracker_real_package_contract_with_random_weights():
    # The real predictor with random weights (no checkpoint): shapes, dtypes and the query convention. CoTracker
    # writes each query back into its own frame, so our point must come back exactly there.
    pytest.importorskip("cotracker")
    from cotracker.predictor import CoTrackerPredictor

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    points = np.array([[[10.5, 20.5], [30.25, 5.0], [63.5, 47.5]], [[0.5, 0.5], [2.0, 3.0], [40.0, 30.0]]])
    item = track_item(frames, points, [5, 1])
    make_tracker(_cotracker_cfg(), predictor=CoTrackerPredictor(checkpoint=None)).process([item])
    assert item.ok, item.error
    assert item.tracks.shape == (2, 3, 8, 2) and item.track_vis.shape == (2, 3, 8)
    np.testing.assert_allclose(item.tracks[0, :, 5], points[0], atol=1e-3)
    np.testing.assert_allclose(item.tracks[1, :, 1], points[1], atol=1e-3)
    assert item.track_vis[0, :, 5].all() and item.track_vis[1, :, 1].all()


@pytest.mark.slow
def test_cotracker_real_package_on_a_moving_texture():
    pytest.importorskip("cotracker")
    ckpt = os.environ.get("PITE_COTRACKER_CHECKPOINT")
    if not ckpt or not os.path.isfile(ckpt):
        pytest.skip("set PITE_COTRACKER_CHECKPOINT to a CoTracker3 checkpoint (scaled_offline.pth)")
    scene = Scene(num_frames=24)
    truth = scene.truth(POINTS_U)
    item = track_item(scene.frames, truth[None, :, 12], [12])
    cfg = _cotracker_cfg(ckpt)
    cfg.track.device = os.environ.get("PITE_DEVICE", "cpu")
    make_tracker(cfg).process([item])
    assert item.ok, item.error
    err = np.linalg.norm(item.tracks[0] - truth, axis=-1)
    assert np.median(err) < 1.0 and err.max() < 3.0
    assert item.track_vis.mean() > 0.9


# ---------------------------------------------------------------------------------------------------------------
# The synthetic world (annotate.synthetic), default difficulty


def test_lk_on_the_synthetic_world_with_exact_points():
    # Ground-truth masks for the points, so this measures the tracker alone (the pipeline's quality test measures
    # given boxes -> GrabCut -> points -> LK). 32 clips gave delta_avg 0.957, OA 0.949, AJ 0.913; these 6 give
    # 0.957 and 0.960 and must stay well clear of the floors of issue 3 (delta_avg 0.70, OA 0.80).
    from annotate.metrics import tapvid_metrics
    from annotate.points import sample_points
    from annotate.synthetic import make_clip

    results = []
    for index in range(6):
        clip = make_clip(0, index)
        gt = clip.gt
        ground = np.array([o["ground_frame"] for o in clip.objects])
        rng = np.random.default_rng(index)
        points = np.stack([sample_points(gt.mask(o, ground[o]), 3, rng) for o in range(gt.n_objects)])
        truth = [gt.track_points(o, ground[o], points[o]) for o in range(gt.n_objects)]
        tracks, vis = track_lk(gray_rgb(clip.frames), points, ground)
        vis &= inside_frame(tracks, gt.width, gt.height)
        t = tracks.shape[2]
        results.append(tapvid_metrics(tracks.reshape(-1, t, 2), vis.reshape(-1, t),
                                      np.concatenate([p for p, _ in truth]), np.concatenate([v for _, v in truth]),
                                      np.repeat(ground, 3), size=(gt.width, gt.height)))
    delta = np.mean([r["delta_avg"] for r in results])
    oa = np.mean([r["oa"] for r in results])
    assert delta >= 0.85 and oa >= 0.85, (delta, oa)


