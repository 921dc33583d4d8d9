"""What both trackers share: reading the T samples off the tracks, the bounds a track may take, and the stage's
plumbing (`TrackStage`: inputs checked, one object named by two phrases tracked once, windows for long clips, the
inside-frame rule). A backend implements `track` on one window."""

from __future__ import annotations

import numpy as np

from annotate.clip import ground_to_track
from annotate.config import AnnotateConfig
from annotate.errors import StageError
from annotate.frames import inside_frame
from annotate.item import ClipItem
from annotate.stage import Stage
from annotate.track.windows import check_windows, track_in_windows

# ---------------------------------------------------------------------------------------------------------------
# Reading the T samples off the tracks


def read_off_samples(tracks: np.ndarray, vis: np.ndarray, track_times: np.ndarray, sample_times: np.ndarray,
                     size: tuple[int, int] | None = None, atol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Tracks on the F tracking frames -> the T samples.

    tracks (N, K, F, 2), vis (N, K, F), track_times (F,) increasing seconds, sample_times (T,) seconds.
    A sample whose time equals a tracking time (within `atol`) takes that frame exactly; one between two tracking
    frames is interpolated linearly and is visible only if both neighbours are; one before the first / after the
    last tracking frame holds that frame's value (the decoder includes the clip's first and last frame, so this only
    absorbs rounding). With `size=(w, h)`, a sample outside the frame is not visible.
    Returns traj (N, K, T, 2) float32 and vis (N, K, T) bool.
    """
    tracks = np.asarray(tracks, dtype=np.float64)
    vis = np.asarray(vis, dtype=bool)
    tt = np.asarray(track_times, dtype=np.float64)
    st = np.asarray(sample_times, dtype=np.float64)
    if tracks.ndim != 4 or tracks.shape[-1] != 2 or vis.shape != tracks.shape[:-1] or tt.shape != tracks.shape[2:3]:
        raise ValueError(f"read_off_samples: tracks {tracks.shape}, vis {vis.shape}, track_times {tt.shape} disagree")
    if len(tt) == 0:
        raise ValueError("read_off_samples: no tracking frames")
    if np.any(np.diff(tt) <= 0):
        raise ValueError("read_off_samples: track_times must be strictly increasing")
    st = np.clip(st, tt[0], tt[-1])
    # Left neighbour i, right neighbour j, and the weight w of j.
    i = np.clip(np.searchsorted(tt, st, side="right") - 1, 0, len(tt) - 1)
    j = np.minimum(i + 1, len(tt) - 1)
    span = tt[j] - tt[i]
    w = (st - tt[i]) / np.where(span > 0, span, 1.0)
    w = np.where(np.abs(st - tt[i]) <= atol, 0.0, np.where(np.abs(tt[j] - st) <= atol, 1.0, w))
    traj = tracks[:, :, i] * (1.0 - w)[:, None] + tracks[:, :, j] * w[:, None]
    between = vis[:, :, i] & vis[:, :, j]
    out_vis = np.where(w == 0.0, vis[:, :, i], np.where(w == 1.0, vis[:, :, j], between))
    if size is not None:
        out_vis &= inside_frame(traj, *size)
    return traj.astype(np.float32), out_vis


def object_sizes(clip, groundings) -> np.ndarray:
    """(N, 2) each object's box width and height in tracking-frame pixels."""
    if not groundings:
        return np.zeros((0, 2))
    boxes = np.array([np.asarray(g.box, np.float64) for g in groundings]).reshape(-1, 2, 2)
    corners = ground_to_track(clip, boxes)
    return np.abs(corners[:, 1] - corners[:, 0])


def bound_to_frame(tracks: np.ndarray, sizes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Tracks (N, K, F, 2) with no position further outside the frame than its object's own size (N, 2): an
    object that left the frame is somewhere near where it left, and no tracker's guess for an unseen point (a
    stitched window, a model's output for an invisible query) may claim more than that."""
    lo = -sizes[:, None, None, :]
    hi = np.array([width, height], np.float64) + sizes[:, None, None, :]
    return np.clip(tracks, lo, hi)


# ---------------------------------------------------------------------------------------------------------------
# The stage


class TrackStage(Stage):
    """Common plumbing: check the inputs, run the backend, apply the inside-frame rule."""

    name = "track"

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        check_windows(cfg.track.window, cfg.track.overlap)

    def track(self, frames: np.ndarray, points: np.ndarray, query_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames (F, h, w, 3) uint8 RGB, points (N, K, 2) continuous px at query_frames (N,) -> (N,K,F,2), (N,K,F)."""
        raise NotImplementedError

    def _track_in_frame(self, frames, points, query_frames):
        """`track` on one window, with the inside-frame rule: windows are handed over at visible points only."""
        tracks, vis = self.track(frames, points, query_frames)
        tracks = np.asarray(tracks, dtype=np.float64)
        return tracks, np.asarray(vis, dtype=bool) & inside_frame(tracks, frames.shape[2], frames.shape[1])

    def _track_all(self, frames, points, query_frames):
        n, k = points.shape[:2]
        num_frames = len(frames)
        window = self.cfg.track.window
        if n == 0:
            return np.zeros((0, k, num_frames, 2)), np.zeros((0, k, num_frames), dtype=bool)
        if 0 < window < num_frames:
            return track_in_windows(self._track_in_frame, frames, points, query_frames, window,
                                    self.cfg.track.overlap)
        return self.track(np.asarray(frames), points, query_frames)  # one call (a lazy source fits one window)

    def process_item(self, item: ClipItem) -> None:
        clip = item.clip
        if clip is None:
            raise StageError(self.name, "no decoded clip (run decode first)")
        if item.points is None or len(item.points) != len(item.groundings):
            raise StageError(self.name, "points missing or not one row per grounding (run points first)")
        frames = clip.track_frames
        num_frames = len(frames)
        query_frames = np.array([g.track_frame for g in item.groundings], dtype=np.int64)
        if np.any((query_frames < 0) | (query_frames >= num_frames)):
            raise StageError(self.name, f"grounding frame outside the {num_frames} tracking frames")
        points = np.asarray(item.points, dtype=np.float64)
        if points.ndim != 3 or points.shape[-1] != 2:
            raise StageError(self.name, f"points must be (N, K, 2), got {points.shape}")
        points = ground_to_track(clip, points)  # sampled on the grounding frames, tracked on the tracking frames
        rep = np.asarray(item.representative_rows(), dtype=np.int64)
        unique, back = np.unique(rep, return_inverse=True)  # one object named by two phrases is tracked once
        tracks, vis = self._track_all(frames, points[unique], query_frames[unique])
        tracks, vis = tracks[back.reshape(-1)], vis[back.reshape(-1)]
        w, h = clip.size
        sizes = object_sizes(clip, item.groundings)
        item.tracks = bound_to_frame(np.asarray(tracks, dtype=np.float64), sizes, w, h).astype(np.float32)
        item.track_vis = np.asarray(vis, dtype=bool) & inside_frame(item.tracks, w, h)
