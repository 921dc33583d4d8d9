"""The track stage's CoTracker3 backend (package `cotracker`, installed from its checkout; CC-BY-NC 4.0).

Coordinates: CoTracker puts pixel centres on integers (it rescales with align_corners=True), ours are continuous,
so 0.5 is subtracted going in and added back coming out (annotate/track.py's module docstring).
"""

from __future__ import annotations

import os

import numpy as np

from annotate.config import AnnotateConfig, TrackConfig
from annotate.device import resolve_device
from annotate.errors import ConfigError, StageError
from annotate.stage import Resources
from annotate.track import TrackStage


class CoTrackerTracker(TrackStage):
    """CoTracker3 offline: all points of a window in one call, queries (t, x, y) at each object's query frame.

    The package's predictor (cotracker/predictor.py, CoTrackerPredictor.forward) takes video (B, T, 3, H, W) float
    0-255 and queries (B, N, 3) as (t, x, y) pixels with pixel centres on integers; with backward_tracking=True it
    tracks before the query frame too; it returns tracks (B, T, N, 2) and visibility (B, T, N) bool.

    One pass by default (`track.backward_pass: false`): the offline model attends over every frame of the window,
    before and after each query, so the reversed second pass of backward_tracking=True (the whole model run again
    on the flipped clip) buys little for its 2x cost; CoTracker's own TAP-Vid evaluation does not use it.
    `track.interp_shape` is the size the predictor resizes frames to (the model's 384x512 by default).
    """

    def __init__(self, cfg: AnnotateConfig, predictor=None):
        super().__init__(cfg)
        self.predictor = predictor

    def resources(self) -> Resources:
        device = self.cfg.track.device
        gpu = device == "auto" or device.startswith("cuda")  # auto: the GPU Ray assigns, when there is one
        return Resources(num_cpus=1.0, num_gpus=1.0 if gpu else 0.0, memory_gb=4.0)

    def version(self) -> str:
        try:
            from cotracker.version import __version__
        except ImportError:
            __version__ = "unknown"
        return f"cotracker/{__version__}"

    def setup(self) -> None:
        if self.predictor is None:
            self.predictor = load_cotracker(self.cfg.track)
        shape = self.cfg.track.interp_shape
        if shape:
            if len(shape) != 2 or min(shape) < 32 or any(int(v) % 8 for v in shape):
                raise ConfigError(f"track.interp_shape: expected [height, width], multiples of 8 and >= 32, got "
                                  f"{list(shape)}")
            self.predictor.interp_shape = (int(shape[0]), int(shape[1]))

    def track(self, frames, points, query_frames):
        import torch

        if self.predictor is None:
            self.setup()
        device = resolve_device(self.cfg.track.device)
        n, k = points.shape[:2]
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)[None].float()
        t = np.repeat(query_frames, k).astype(np.float32)[:, None]
        xy = (points.reshape(-1, 2) - 0.5).astype(np.float32)  # CoTracker: pixel centres on integers
        queries = torch.from_numpy(np.concatenate([t, xy], axis=1))[None].to(device)
        with torch.no_grad():
            pred_tracks, pred_vis = self.predictor(video, queries=queries,
                                                   backward_tracking=bool(self.cfg.track.backward_pass))
        pred_tracks = pred_tracks[0].float().cpu().numpy()  # (F, N*K, 2)
        pred_vis = pred_vis[0].cpu().numpy()
        if pred_vis.ndim == 3:  # some versions return (B, T, N, 1)
            pred_vis = pred_vis[..., 0]
        num_frames = len(frames)
        if pred_tracks.shape != (num_frames, n * k, 2) or pred_vis.shape != (num_frames, n * k):
            raise StageError(self.name, f"cotracker returned tracks {pred_tracks.shape} / visibility "
                                        f"{pred_vis.shape}, expected ({num_frames}, {n * k}, 2)")
        tracks = (pred_tracks.astype(np.float64) + 0.5).transpose(1, 0, 2).reshape(n, k, num_frames, 2)
        vis = pred_vis.astype(bool).T.reshape(n, k, num_frames)
        return tracks, vis


def load_cotracker(cfg: TrackConfig):
    """CoTracker3 offline predictor from `track.weights`, on `track.device`; one-line ConfigError if unavailable."""
    try:
        from cotracker.predictor import CoTrackerPredictor
    except ImportError as exc:
        raise ConfigError("track.backend=cotracker needs the `cotracker` package: install it from a checkout of "
                          "facebookresearch/co-tracker with `pip install -e .` (CC-BY-NC 4.0), or set "
                          "track.backend=lk") from exc
    if not cfg.weights:
        raise ConfigError("track.weights: set it to a CoTracker3 checkpoint (scaled_offline.pth) for "
                          "track.backend=cotracker")
    if not os.path.isfile(cfg.weights):
        raise ConfigError(f"track.weights: {cfg.weights} is not a file (expected a CoTracker3 checkpoint, "
                          "scaled_offline.pth)")
    predictor = CoTrackerPredictor(checkpoint=cfg.weights)  # defaults: CoTracker3 offline, window_len=60
    return predictor.to(resolve_device(cfg.device)).eval()
