"""Decoded frames as arrays: their size and orientation, filing them into arrays, and a lazy source of them.

`LazyFrames` stands for the (F, h, w, 3) uint8 tracking frames of a clip too long to hold: indexing it decodes only
the frames asked for (annotate.video gives it its reader), so memory does not grow with the clip's length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import numpy as np

# Single frames kept by LazyFrames: the grounding frames are read by ground, segment and the report preview in turn.
KEEP_FRAMES = 4
# Frames decoded per pass when LazyFrames is iterated (one seek per chunk rather than per frame).
ITER_CHUNK = 32


def decoded_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    """(w, h, scale) with the longer side at most max_side; never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def quarter_turns(ccw_degrees: float) -> int:
    """Counter-clockwise quarter turns (0-3) for a display-matrix angle, as FFmpeg's autorotate rounds it."""
    return int(round(ccw_degrees / 90.0)) % 4


def to_display(image: np.ndarray, turns: int) -> np.ndarray:
    """Turn a decoded (h, w, ...) image upright: `turns` quarter turns counter-clockwise (np.rot90's sense)."""
    return np.rot90(image, turns) if turns else image


class FrameFiler:
    """Converts decoded frames to upright RGB at the bounded size and files them into preallocated arrays."""

    def __init__(self, max_side: int, slots: dict[int, list[tuple[int, int]]], counts: tuple[int, ...]):
        self.max_side = max_side
        self.slots = slots  # source index -> [(which array, row)]
        self.counts = counts  # rows of each array
        self.arrays: Optional[tuple[np.ndarray, ...]] = None

    def start(self, frame) -> None:
        """Sizes come from the first frame: the display rotation is frame side data."""
        self.turns = quarter_turns(frame.rotation)
        w, h = (frame.height, frame.width) if self.turns % 2 else (frame.width, frame.height)
        self.width, self.height = w, h
        dw, dh, self.scale = decoded_size(w, h, self.max_side)
        self.coded_out = (dh, dw) if self.turns % 2 else (dw, dh)  # size to convert to, before turning
        self.arrays = tuple(np.empty((c, dh, dw, 3), np.uint8) for c in self.counts)

    def __call__(self, index: int, frame) -> None:
        if self.arrays is None:
            self.start(frame)
        cw, ch = self.coded_out
        rgb = frame.to_ndarray(format="rgb24", width=cw, height=ch, interpolation="AREA")
        rgb = to_display(rgb, self.turns)
        for which, row in self.slots[index]:
            self.arrays[which][row] = rgb


class LazyFrames:
    """(F, h, w, 3) uint8 frames decoded when indexed, never all held at once; indexes like the array it stands for.

    An int gives one frame (h, w, 3); a slice, list or 1-D int array gives (len, h, w, 3) in the order asked
    (repeats allowed), decoded in one sorted pass. The last KEEP_FRAMES single frames are kept; nothing else is.
    `read(positions)` decodes sorted, unique positions in one pass and returns them stacked.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, shape: tuple[int, int, int, int], read: Callable[[np.ndarray], np.ndarray],
                 keep: int = KEEP_FRAMES):
        self.shape = tuple(int(s) for s in shape)
        self._read = read
        self._keep = keep
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self.decoded = 0  # frames decoded so far (what tests and benchmarks count)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyFrames(shape={self.shape}, decoded={self.decoded})"

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._single(int(key))
        wanted = self._positions(key)
        unique, where = np.unique(wanted, return_inverse=True)
        frames = self._decode(unique)
        in_order = len(unique) == len(wanted) and bool(np.all(unique == wanted))
        return frames if in_order else frames[where.reshape(-1)]

    def __iter__(self):
        for lo in range(0, len(self), ITER_CHUNK):
            yield from self[lo:lo + ITER_CHUNK]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every frame at once: O(F) memory, for callers that need a real array (one call of the tracker)."""
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)

    def _single(self, pos: int) -> np.ndarray:
        pos = self._checked(np.array([pos]))[0]
        if pos in self._kept:
            self._kept.move_to_end(pos)
        else:
            self._kept[pos] = self._decode(np.array([pos]))[0]
            if len(self._kept) > self._keep:
                self._kept.popitem(last=False)
        return self._kept[pos].copy()  # a copy: a caller that draws on it must not change what is kept

    def _positions(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return np.arange(*key.indices(len(self)), dtype=np.int64)
        pos = np.asarray(key)
        if pos.ndim != 1 or (pos.size and (pos.dtype == bool or not np.issubdtype(pos.dtype, np.integer))):
            raise TypeError(f"LazyFrames takes an int, a slice or a 1-D list of ints, got {key!r:.80}")
        return self._checked(pos.astype(np.int64))

    def _checked(self, pos: np.ndarray) -> np.ndarray:
        """Positions counted from the end made plain; an IndexError for any outside the frames."""
        bad = pos[(pos < -len(self)) | (pos >= len(self))]
        if len(bad):
            raise IndexError(f"frame {int(bad[0])} is out of range for {len(self)} frames")
        return np.where(pos < 0, pos + len(self), pos)

    def _decode(self, positions: np.ndarray) -> np.ndarray:
        if len(positions) == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        self.decoded += len(positions)
        return self._read(positions)
