"""What decoding a clip gives: its facts (`VideoInfo`) and its frames at the size each stage wants (`DecodedClip`).

annotate.decode.video fills them; the stages read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from annotate.frames import LazyFrames


@dataclass
class VideoInfo:
    path: str
    width: int  # displayed size (rotation applied), source pixels
    height: int
    fps: float  # average frame rate of the stream
    num_frames: int  # n: frames in the clip (inside start/end when given)
    duration: float  # seconds of the clip
    rotation: int = 0  # degrees clockwise applied to get the displayed orientation
    first_index: int = 0  # source index of the clip's first frame (0 without start)
    start_time: float = 0.0  # seconds of the clip's first frame in the file


@dataclass
class DecodedClip:
    """A clip's frames, each kind at the size its consumer wants (docs/design.md, "Resolution per stage"):
    the T samples at `max_side` (features, pictures), the tracking frames at `track.max_side`, and the grounding
    frames (a few of the tracking frames) at the grounder's own input size. Boxes, masks and query points are in
    grounding-frame pixels; tracks in tracking-frame pixels. All are upright and scaled alike on both axes, so a
    coordinate divided by its frame's size is the same place of the displayed video."""

    info: VideoInfo
    scale: float  # sample pixels per source pixel (<= 1: never upscaled)
    # The T samples (docs/design.md: source indices round(linspace(0, n - 1, T)), repeats allowed when n < T).
    sample_indices: np.ndarray  # (T,) int64 source frame indices
    sample_times: np.ndarray  # (T,) float64 seconds from the clip start
    sample_frames: np.ndarray  # (T, hs, ws, 3) uint8 RGB at sample size
    # Frames that tracking runs on: up to track_fps over the whole clip, plus every extra index asked for.
    track_indices: np.ndarray  # (F,) int64 source frame indices, sorted, unique
    track_times: np.ndarray  # (F,) float64 seconds from the clip start
    # (F, h, w, 3) uint8 RGB at tracking size: an array, or for a clip over `resident_frames` a LazyFrames that
    # decodes what it is indexed with (ints, slices, lists of positions) and otherwise reads like one.
    track_frames: Union[np.ndarray, LazyFrames]
    track_scale: Optional[float] = None  # tracking pixels per source pixel (None: `scale`)
    # The grounding frames: positions into track_frames (sorted) and those frames at grounding size (an array, or a
    # LazyFrames when the tracking frames are one). None: the clip grounds on its tracking frames themselves.
    ground_positions: Optional[np.ndarray] = None  # (G,) int64
    ground_frames: Union[np.ndarray, LazyFrames, None] = None  # (G, hg, wg, 3) uint8
    ground_scale: Optional[float] = None  # grounding pixels per source pixel

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the tracking frames: the pixels of tracks."""
        return int(self.track_frames.shape[2]), int(self.track_frames.shape[1])

    @property
    def ground_size(self) -> tuple[int, int]:
        """(width, height) of the grounding frames: the pixels of boxes, masks and query points."""
        if self.ground_frames is None:
            return self.size
        return int(self.ground_frames.shape[2]), int(self.ground_frames.shape[1])

    @property
    def sample_size(self) -> tuple[int, int]:
        return int(self.sample_frames.shape[2]), int(self.sample_frames.shape[1])

    def source_scale(self, which: str) -> float:
        """Pixels per source pixel of the `sample`, `track` or `ground` frames."""
        track = self.scale if self.track_scale is None else self.track_scale
        return {"sample": self.scale, "track": track,
                "ground": track if self.ground_scale is None else self.ground_scale}[which]

    def ground_frames_at(self, positions) -> np.ndarray:
        """(len, hg, wg, 3) grounding frames of these tracking-frame positions (each must be a grounding frame)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self.ground_frames is None:
            return np.asarray(self.track_frames[positions])
        if len(self.ground_positions) == 0 and len(positions):
            raise KeyError(f"tracking frame {int(positions[0])} was not decoded for grounding")
        rows = np.searchsorted(self.ground_positions, positions).clip(max=max(0, len(self.ground_positions) - 1))
        missing = positions[self.ground_positions[rows] != positions] if len(positions) else positions
        if len(missing):
            raise KeyError(f"tracking frame {int(missing[0])} was not decoded for grounding")
        return np.asarray(self.ground_frames[rows])

    def ground_frame(self, position: int) -> np.ndarray:
        """(hg, wg, 3) the grounding frame at a tracking-frame position (one int index: a lazy source keeps it, so
        ground, segment and the preview decode it once)."""
        if self.ground_frames is None:
            return np.asarray(self.track_frames[int(position)])
        row = int(np.searchsorted(self.ground_positions, position))
        if row >= len(self.ground_positions) or self.ground_positions[row] != position:
            raise KeyError(f"tracking frame {int(position)} was not decoded for grounding")
        return np.asarray(self.ground_frames[row])

    def track_position(self, source_index: int) -> int:
        """Index into track_frames of a source frame index (which must have been decoded for tracking)."""
        pos = int(np.searchsorted(self.track_indices, source_index))
        if pos >= len(self.track_indices) or self.track_indices[pos] != source_index:
            raise KeyError(f"source frame {source_index} was not decoded for tracking")
        return pos

    def sample_track_positions(self) -> np.ndarray:
        """(T,) index into track_frames of each sample, or -1 where a sample is not a tracking frame."""
        pos = np.searchsorted(self.track_indices, self.sample_indices).clip(max=len(self.track_indices) - 1)
        return np.where(self.track_indices[pos] == self.sample_indices, pos, -1)


def ground_to_track(clip: DecodedClip, points: np.ndarray) -> np.ndarray:
    """(..., 2) grounding-frame pixels -> tracking-frame pixels (each axis by its frames' size ratio)."""
    (gw, gh), (tw, th) = clip.ground_size, clip.size
    return np.asarray(points, dtype=np.float64) * np.array([tw / gw, th / gh])
