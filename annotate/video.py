"""Decode a clip with PyAV as DESIGN.md's "Frames, time and coordinates" says.

INTERFACE DRAFT — the dataclasses below are the contract the stages code against; `probe` and `decode_clip`
are being implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    info: VideoInfo
    scale: float  # decoded pixels per source pixel (<= 1: longer side bounded by max_side)
    # The T samples (DESIGN: source indices round(linspace(0, n - 1, T)), repeats allowed when n < T).
    sample_indices: np.ndarray  # (T,) int64 source frame indices
    sample_times: np.ndarray  # (T,) float64 seconds from the clip start
    sample_frames: np.ndarray  # (T, h, w, 3) uint8 RGB at decoded size
    # Frames that tracking runs on: up to track_fps over the whole clip, plus every extra index asked for.
    track_indices: np.ndarray  # (F,) int64 source frame indices, sorted, unique
    track_times: np.ndarray  # (F,) float64 seconds from the clip start
    track_frames: np.ndarray  # (F, h, w, 3) uint8 RGB at decoded size

    @property
    def size(self) -> tuple[int, int]:
        """Decoded (width, height)."""
        return int(self.track_frames.shape[2]), int(self.track_frames.shape[1])

    def track_position(self, source_index: int) -> int:
        """Index into track_frames of a source frame index (which must have been decoded for tracking)."""
        pos = int(np.searchsorted(self.track_indices, source_index))
        if pos >= len(self.track_indices) or self.track_indices[pos] != source_index:
            raise KeyError(f"source frame {source_index} was not decoded for tracking")
        return pos
