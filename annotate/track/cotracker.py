"""The track stage's CoTracker3 backend (package `cotracker`, installed from its checkout; CC-BY-NC 4.0).

Coordinates: CoTracker puts pixel centres on integers (it rescales with align_corners=True), ours are continuous,
so 0.5 is subtracted going in and added back coming out (annotate/track/'s module docstring).

Precision (`track.dtype`; auto = bfloat16 on a GPU, float32 on the CPU, annotate.device.resolve_dtype). Below float32
only the model's learned dense parts run under torch.autocast: `fnet` (the feature CNN), `corr_mlp` (the MLP that
embeds each 7x7x7x7 correlation volume) and `updateformer` (the transformer that refines tracks). Everything between
them stays float32: the feature normalisation and pyramid, the bilinear sampling, the correlation, and the
coordinate / visibility updates the model accumulates over its iterations. Why not the whole forward under autocast
with the correlation excluded: the correlation is an inline `torch.einsum` in CoTrackerThreeOffline.forward, neither
a function nor a module that could be wrapped in autocast(enabled=False), and autocast lists einsum as a low-precision
op, so under a whole-model autocast it would run in bfloat16. (The sampling itself would stay float32 either way:
autocast runs grid_sample in its widest input's dtype, and the model casts its feature maps back to the video's
float32.) Wrapping the three parts instead keeps the correlation float32 while most of the FLOPs (the CNN over every
frame, the correlation MLP over T x N x 4 levels x 6 iterations, the transformer) run in bfloat16. With TF32 on (a
CUDA device), the float32 einsum runs on TF32 tensor cores: 10-bit mantissas in, float32 accumulation.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import numpy as np

from annotate.config import AnnotateConfig, TrackConfig
from annotate.device import DTYPES, enable_tf32, resolve_device, resolve_dtype
from annotate.errors import ConfigError, StageError
from annotate.stage import Resources, import_problem
from annotate.track.base import TrackStage

# CoTracker3 offline's submodules that run under autocast below float32 (module docstring).
AUTOCAST_PARTS = ("fnet", "corr_mlp", "updateformer")


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
        if str(cfg.track.dtype).strip().lower() not in DTYPES:
            raise ConfigError(f"track.dtype: unknown dtype {cfg.track.dtype!r} (expected {' | '.join(DTYPES)})")
        self.predictor = predictor
        self.device = None  # torch device string, set in setup
        self.autocast_dtype = None  # torch dtype of the autocast parts; None = all float32

    def problems(self) -> list[str]:
        return [] if self.predictor is not None else cotracker_problems(self.cfg.track)

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
        import torch

        track = self.cfg.track
        self.device = resolve_device(track.device)
        if self.predictor is None:
            self.predictor = load_cotracker(track, self.device)
        shape = track.interp_shape
        if shape:
            if len(shape) != 2 or min(shape) < 32 or any(int(v) % 8 for v in shape):
                raise ConfigError(f"track.interp_shape: expected [height, width], multiples of 8 and >= 32, got "
                                  f"{list(shape)}")
            self.predictor.interp_shape = (int(shape[0]), int(shape[1]))
        dtype = resolve_dtype(track.dtype, self.device)
        self.autocast_dtype = None if dtype == "float32" else getattr(torch, dtype)
        if self.autocast_dtype is not None:
            _check_parts(getattr(self.predictor, "model", None), dtype)
        enable_tf32(self.device)  # the float32 parts on a GPU (module docstring); a no-op elsewhere

    def track(self, frames, points, query_frames):
        import torch

        if self.device is None:
            self.setup()
        device = self.device
        n, k = points.shape[:2]
        video = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)[None].float()
        t = np.repeat(query_frames, k).astype(np.float32)[:, None]
        xy = (points.reshape(-1, 2) - 0.5).astype(np.float32)  # CoTracker: pixel centres on integers
        queries = torch.from_numpy(np.concatenate([t, xy], axis=1))[None].to(device)
        model = getattr(self.predictor, "model", None)
        with torch.no_grad(), autocast_parts(model, torch.device(device).type, self.autocast_dtype):
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
        return pin_queries(tracks, vis, points, query_frames)


def pin_queries(tracks: np.ndarray, vis: np.ndarray, points: np.ndarray, query_frames: np.ndarray):
    """Each query frame holds its query exactly, visible. The predictor already writes each query into its own frame
    (co-tracker issue #28) but in float32 at the working size and scales it back, which moves it by ~1e-5 px;
    writing our float64 points there makes the query frame the point the points stage chose, bit for bit."""
    rows = np.arange(len(points))
    tracks[rows, :, query_frames] = points
    vis[rows, :, query_frames] = True
    return tracks, vis


@contextmanager
def autocast_parts(model, device_type: str, dtype):
    """Within the block, `model`'s AUTOCAST_PARTS run under torch.autocast(device_type, dtype) and hand float32
    back; the rest of its forward stays float32 (module docstring). No-op when dtype is None.

    Each part's bound `forward` is shadowed by an instance attribute for the duration of the block and restored
    after, so the model, its state dict and any other holder of it are left as they were."""
    if dtype is None:
        yield
        return
    parts = [getattr(model, name) for name in AUTOCAST_PARTS]
    for part in parts:
        part.forward = _in_autocast(part.forward, device_type, dtype)
    try:
        yield
    finally:
        for part in parts:
            del part.forward


def _in_autocast(forward, device_type: str, dtype):
    import torch

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            out = forward(*args, **kwargs)
        # float32 out: what follows (normalisation, sampling, correlation, coordinate sums) is float32 arithmetic
        return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

    return run


def _check_parts(model, dtype: str) -> None:
    missing = [name for name in AUTOCAST_PARTS if not hasattr(model, name)]
    if missing:
        raise ConfigError(f"track.dtype={dtype}: this CoTracker model has no {', '.join(missing)} (expected "
                          f"CoTracker3 offline's {', '.join(AUTOCAST_PARTS)}); set track.dtype=float32")


def cotracker_problems(cfg: TrackConfig) -> list[str]:
    """The package and the checkpoint, one line each (what `make cotracker` or track.weights= fixes)."""
    found = import_problem("cotracker.predictor", "track.backend=cotracker",
                           "`make cotracker COTRACKER_SRC=DIR` installs it from DIR, a checkout of "
                           "facebookresearch/co-tracker (CC-BY-NC 4.0, not on PyPI); or set track.backend=lk")
    if not cfg.weights:
        found.append("track.weights: set it to a CoTracker3 checkpoint (scaled_offline.pth) for "
                     "track.backend=cotracker")
    elif not os.path.isfile(cfg.weights):
        found.append(f"track.weights: {cfg.weights} is not a file (expected a CoTracker3 checkpoint, "
                     "scaled_offline.pth)")
    return found


def load_cotracker(cfg: TrackConfig, device: str):
    """CoTracker3 offline predictor from `track.weights`, on `device`; one-line ConfigError if unavailable."""
    found = cotracker_problems(cfg)
    if found:
        raise ConfigError(found[0])
    from cotracker.predictor import CoTrackerPredictor

    predictor = CoTrackerPredictor(checkpoint=cfg.weights)  # defaults: CoTracker3 offline, window_len=60
    return predictor.to(device).eval()
