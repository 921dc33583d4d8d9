"""Decoded frames as arrays: their size and orientation, filing them into arrays, and a lazy source of them.

`LazyFrames` stands for the (F, h, w, 3) uint8 tracking frames of a clip too long to hold: indexing it decodes only
the frames asked for (annotate.decode.video gives it its reader), so memory does not grow with the clip's length.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

# Single frames kept by LazyFrames: the grounding frames are read by ground, segment and the report preview in turn.
KEEP_FRAMES = 4
# Frames decoded per pass when LazyFrames is iterated (one seek per chunk rather than per frame).
ITER_CHUNK = 32


@dataclass(frozen=True)
class FrameSize:
    """The size a frame is decoded to: longer side at most `max_side` and, when `short_side` is set, shorter side at
    most `short_side` (Grounding DINO's 800 / 1333). Never upscaled: a smaller video keeps its own size."""

    max_side: int
    short_side: int = 0

    def fit(self, width: int, height: int) -> tuple[int, int, float]:
        """(w, h, scale) of a width x height frame."""
        scale = min(1.0, self.max_side / max(width, height))
        if self.short_side > 0:
            scale = min(scale, self.short_side / min(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale)), scale


def decoded_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    """(w, h, scale) with the longer side at most max_side; never upscaled."""
    return FrameSize(max_side).fit(width, height)


def quarter_turns(ccw_degrees: float) -> int:
    """Counter-clockwise quarter turns (0-3) for a display-matrix angle, as FFmpeg's autorotate rounds it."""
    return int(round(ccw_degrees / 90.0)) % 4


def to_display(image: np.ndarray, turns: int) -> np.ndarray:
    """Turn a decoded (h, w, ...) image upright: `turns` quarter turns counter-clockwise (np.rot90's sense)."""
    return np.rot90(image, turns) if turns else image


class FrameFiler:
    """Converts decoded frames to upright RGB and files them into preallocated arrays, each at its own size."""

    def __init__(self, sizes: Union[int, FrameSize, Sequence[FrameSize]], slots: dict[int, list[tuple[int, int]]],
                 counts: tuple[int, ...]):
        if isinstance(sizes, int):
            sizes = FrameSize(sizes)
        if isinstance(sizes, FrameSize):
            sizes = (sizes,) * len(counts)
        if len(sizes) != len(counts):
            raise ValueError(f"FrameFiler: {len(sizes)} sizes for {len(counts)} arrays")
        self.sizes = tuple(sizes)
        self.slots = slots  # source index -> [(which array, row)]
        self.counts = counts  # rows of each array
        self.arrays: Optional[tuple[np.ndarray, ...]] = None

    def start(self, frame) -> None:
        """Sizes come from the first frame: the display rotation is frame side data."""
        self.turns = quarter_turns(frame.rotation)
        w, h = (frame.height, frame.width) if self.turns % 2 else (frame.width, frame.height)
        self.width, self.height = w, h
        fitted = [size.fit(w, h) for size in self.sizes]
        self.scales = tuple(scale for _, _, scale in fitted)
        self.scale = self.scales[0] if self.scales else 1.0
        # Size to convert each array's frames to, before turning them upright.
        self.coded_out = tuple((dh, dw) if self.turns % 2 else (dw, dh) for dw, dh, _ in fitted)
        self.arrays = tuple(np.empty((c, dh, dw, 3), np.uint8) for c, (dw, dh, _) in zip(self.counts, fitted))

    def __call__(self, index: int, frame) -> None:
        if self.arrays is None:
            self.start(frame)
        converted: dict[tuple[int, int], np.ndarray] = {}  # arrays of one size share the conversion
        for which, row in self.slots[index]:
            cw, ch = self.coded_out[which]
            if (cw, ch) not in converted:
                rgb = frame.to_ndarray(format="rgb24", width=cw, height=ch, interpolation="AREA")
                converted[(cw, ch)] = to_display(rgb, self.turns)
            self.arrays[which][row] = converted[(cw, ch)]


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


def inside_frame(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """(..., 2) continuous pixel coords -> (...) bool: the point lies on the image."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)
