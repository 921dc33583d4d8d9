"""Track stage: follow each object's K points over the tracking frames, then read the T samples off the tracks.

Two backends (docs/design.md, "Backends"), one output: `item.tracks` (N, K, F, 2) float32 continuous pixel coordinates on
`item.clip.track_frames` and `item.track_vis` (N, K, F) bool. Each object's points are queries at its own grounding
frame and are tracked forward to the end and backward to the start. A point is visible only if the tracker says so
and it lies inside the frame (0 <= x < w, 0 <= y < h).

- `lk`: OpenCV's pyramidal Lucas-Kanade, frame to frame, with a forward-backward check and an appearance check
  (`lk.py`). CPU, no weights.
- `cotracker`: CoTracker3 offline through the `cotracker` package (installed from its checkout; CC-BY-NC) and a
  checkpoint path (`track.weights`).

A clip of more than `track.window` tracking frames is tracked window by window and stitched (`windows.py`), so
neither the tracker's memory nor the decoded frames grow with the clip's length.

Modules: `base.py` (reading the samples off the tracks, `TrackStage`), `lk.py` and `cotracker.py` (the backends, named
by their `track.backend` value), `windows.py` (windows and their stitching).

Coordinates: ours are continuous (pixel (i, j) covers [i, i+1) x [j, j+1), centre (i + 0.5, j + 0.5)). OpenCV's
LK and CoTracker both put pixel centres on integers (CoTracker rescales with align_corners=True), so we subtract 0.5
going in and add it back coming out.
"""

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.track.base import TrackStage, bound_to_frame, object_sizes, read_off_samples
from annotate.track.cotracker import CoTrackerTracker
from annotate.track.lk import LKTracker, track_lk
from annotate.track.windows import check_windows, track_in_windows

__all__ = ["CoTrackerTracker", "LKTracker", "TrackStage", "bound_to_frame", "check_windows", "make_tracker",
           "object_sizes", "read_off_samples", "track_in_windows", "track_lk"]


def make_tracker(cfg: AnnotateConfig, predictor=None) -> TrackStage:
    """The track stage for `cfg.track.backend`. `predictor` stands in for CoTracker's (tests inject a double)."""
    backend = cfg.track.backend
    if backend == "lk":
        return LKTracker(cfg)
    if backend == "cotracker":
        return CoTrackerTracker(cfg, predictor=predictor)
    raise ConfigError(f"track.backend: unknown backend {backend!r} (expected lk or cotracker)")
