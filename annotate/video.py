"""Decode a clip with PyAV as DESIGN.md's "Frames, time and coordinates" says.

Two passes over the file, neither holding more than one full-size frame:

1. demux, no decoding: the presentation timestamps (pts) of the packets give every frame's absolute source index
   (its rank in pts order) and its time, so n, the T samples and the tracking frames are known before decoding;
2. decode: each decoded frame is identified by its pts; only the frames asked for are converted to RGB, already
   resized (swscale does the YUV->RGB conversion and the area resize in one go) and turned upright.

Containers whose packets carry no usable pts (raw streams, AVI) index frames by decoder output order instead, and
a file whose decoded pts turn out to disagree with that order is re-read that way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Optional, Union

import av
import numpy as np

from annotate.errors import DecodeError

Source = Union[str, os.PathLike, BinaryIO]  # a path, or an open binary file (e.g. a tar member)

_EPS = 1e-6  # seconds: a frame at exactly `start` is inside the clip despite float rounding
# AVI stores decode-order timestamps only: with B-frames its "pts" are not presentation times.
ORDER_ONLY_FORMATS = ("avi",)
_SEEK_MARGIN_S = 1.0  # seek this far before the first frame wanted, so B-frame reordering cannot skip it
_SCAN_MARGIN_S = 2.0  # demux this far past `end` (in pts) before trusting that no earlier frame can follow
# First bytes of containers we know: a file that starts like one but does not open is damaged, not "not a video".
_MAGIC = ((4, b"ftyp", "MP4/MOV"), (4, b"moov", "MP4/MOV"), (4, b"mdat", "MP4/MOV"), (4, b"wide", "MP4/MOV"),
          (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"RIFF", "AVI"), (0, b"GIF8", "GIF"))


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

    def sample_track_positions(self) -> np.ndarray:
        """(T,) index into track_frames of each sample, or -1 where a sample is not a tracking frame."""
        pos = np.searchsorted(self.track_indices, self.sample_indices).clip(max=len(self.track_indices) - 1)
        return np.where(self.track_indices[pos] == self.sample_indices, pos, -1)


# ---------------------------------------------------------------- the pure parts: which frames, which size


def sample_positions(n: int, num_samples: int) -> np.ndarray:
    """DESIGN's sampling: round(linspace(0, n - 1, T)), positions inside the clip (first and last kept)."""
    return np.round(np.linspace(0, n - 1, num_samples)).astype(np.int64)


def tracking_positions(n: int, fps: float, track_fps: float) -> np.ndarray:
    """Every step-th position from the first, plus the last; the step keeps the rate at or under track_fps."""
    step = max(1, math.ceil(fps / track_fps - 1e-9))
    return np.unique(np.append(np.arange(0, n, step, dtype=np.int64), n - 1))


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


# ---------------------------------------------------------------- opening, with one clear message per failure


def _name(src: Source) -> str:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else str(getattr(src, "name", "<stream>"))


def _sniff(src: Source) -> Optional[str]:
    """The container a file's first bytes announce, if one we know."""
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            head = f.read(16)
    else:
        src.seek(0)
        head = src.read(16)
        src.seek(0)
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return kind
    return None


def _open(src: Source, name: str):
    """Open a container and its video stream, or raise a DecodeError saying which kind of bad input this is."""
    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise DecodeError(f"{name}: missing file (no such file)")
        if not os.path.isfile(src):
            raise DecodeError(f"{name}: not a video (not a regular file)")
        if os.path.getsize(src) == 0:
            raise DecodeError(f"{name}: empty file (0 bytes)")
    else:
        src.seek(0)
    try:
        container = av.open(src if not isinstance(src, os.PathLike) else os.fspath(src), "r")
    except av.error.FFmpegError as exc:
        kind = _sniff(src)
        if kind is None:
            raise DecodeError(f"{name}: not a video (FFmpeg cannot read it as a media file: {exc.strerror})") from None
        raise DecodeError(f"{name}: corrupt or truncated {kind} container (FFmpeg cannot parse its header: "
                          f"{exc.strerror})") from None
    except OSError as exc:
        raise DecodeError(f"{name}: unreadable file ({exc.strerror or exc})") from None
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        container.close()
        raise DecodeError(f"{name}: not a video (no video stream; streams: {kinds})")
    # The first video stream, as players pick it; both passes must read the same one.
    return container, container.streams.video[0]


# ---------------------------------------------------------------- pass 1: the timeline, from packets alone


@dataclass
class _Timeline:
    """Every frame of the stream (up to where the scan stopped) in presentation order."""

    times: np.ndarray  # (N,) float64 seconds from the file's first frame
    pts: Optional[np.ndarray]  # (N,) int64 sorted pts; None when frames are indexed by decoder output order
    fps: float

    def position_of(self) -> dict[int, int]:
        return {int(p): i for i, p in enumerate(self.pts)}


def _frame_rate(stream, name: str, times: Optional[np.ndarray]) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    if times is not None and len(times) > 1 and times[-1] > 0:
        return (len(times) - 1) / float(times[-1])
    raise DecodeError(f"{name}: corrupt: the stream states no frame rate and its timestamps give none")


def _scan(src: Source, name: str, end: Optional[float], by_order: bool) -> _Timeline:
    """Demux (no decoding) to count the frames and read their pts; stop early once past `end`."""
    container, stream = _open(src, name)
    with container:
        tb = stream.time_base
        pts: list[int] = []
        packets = 0  # every packet, discarded ones too, to compare with the header's frame count
        kept = 0  # the frames the decoder will output
        missing_pts = False
        stopped = False
        stop_dts = None  # once dts passes this, no later packet can show a frame before `end` (pts >= dts)
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the empty packet PyAV yields at the end to flush the decoder
                    continue
                packets += 1
                if packet.is_discard:  # e.g. frames an MP4 edit list cuts: the decoder drops them too
                    continue
                kept += 1
                if packet.pts is None:
                    missing_pts = True
                else:
                    pts.append(packet.pts)
                if end is not None and tb is not None and pts:
                    if stop_dts is None:
                        stop_dts = pts[0] + (end + _SCAN_MARGIN_S) / tb
                    if packet.dts is not None and packet.dts > stop_dts:
                        stopped = True
                        break
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{name}: corrupt: container data unreadable after {packets} frames "
                              f"({exc.strerror})") from None
        if kept == 0:
            raise DecodeError(f"{name}: no frames (the video stream is empty)")
        if not stopped and stream.frames > 0 and packets < stream.frames:
            raise DecodeError(f"{name}: truncated: stream ends after {packets} of {stream.frames} frames")
        order_only = by_order or missing_pts or len(set(pts)) != len(pts) or tb is None
        order_only = order_only or bool(set(container.format.name.split(",")) & set(ORDER_ONLY_FORMATS))
        if order_only:
            fps = _frame_rate(stream, name, None)
            return _Timeline(times=np.arange(kept) / fps, pts=None, fps=fps)
        sorted_pts = np.sort(np.asarray(pts, dtype=np.int64))
        times = (sorted_pts - sorted_pts[0]).astype(np.float64) * float(tb)
        return _Timeline(times=times, pts=sorted_pts, fps=_frame_rate(stream, name, times))


def _clip_range(tl: _Timeline, name: str, start: Optional[float], end: Optional[float]) -> tuple[int, int]:
    """(first source index, n) of the frames whose time lies in [start, end)."""
    for label, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise DecodeError(f"{name}: clip {label} is {value}, not a number of seconds")
    lo = 0 if start is None else int(np.searchsorted(tl.times, start - _EPS, side="left"))
    hi = len(tl.times) if end is None else int(np.searchsorted(tl.times, end - _EPS, side="left"))
    if hi <= lo:
        why = ("start is not before end" if start is not None and end is not None and start >= end
               else f"the video's frames lie at 0-{tl.times[-1]:.3f} s")
        raise DecodeError(f"{name}: clip range [{start}, {end}) s holds no frames ({why})")
    return lo, hi - lo


# ---------------------------------------------------------------- pass 2: decode the frames asked for


class _TimestampsDisagree(Exception):
    """Decoded frames do not come out in the pts order we indexed by: index by decoder output order instead."""


class _SeekMissed(Exception):
    """The seek landed after the first frame wanted (or the container cannot seek)."""


def _decode_wanted(src: Source, name: str, tl: _Timeline, wanted: np.ndarray,
                   use: Callable[[int, "av.VideoFrame"], None], threads: int = 1) -> None:
    """Call use(index, frame) for each source index in `wanted` (sorted, unique), in order."""
    seek = tl.pts is not None and wanted[0] > 0
    try:
        _decode_pass(src, name, tl, wanted, use, seek, threads)
    except _SeekMissed:  # the demuxer landed after the first frame wanted: read from the start
        _decode_pass(src, name, tl, wanted, use, False, threads)


def _decode_pass(src, name, tl, wanted, use, seek: bool, threads: int) -> None:
    total = len(tl.times)
    position_of = tl.position_of() if tl.pts is not None else None
    container, stream = _open(src, name)
    with container:
        # One thread by default: the pipeline's parallelism is one worker per CPU, and FFmpeg's "auto" would start
        # a thread per core of the node in every worker (measured here: no gain at 256 px or 720p on 2 cores).
        stream.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        if seek:
            margin = int(_SEEK_MARGIN_S / stream.time_base)
            try:
                container.seek(int(tl.pts[wanted[0]]) - margin, stream=stream, backward=True)
            except av.error.FFmpegError:  # some containers cannot seek: read from the start
                raise _SeekMissed() from None
        next_pos = None  # the index the next decoded frame must have: every frame in between must decode
        j = 0
        try:
            for count, frame in enumerate(container.decode(stream)):
                if position_of is None:
                    pos = count
                else:
                    if frame.pts is None:
                        raise _TimestampsDisagree()
                    pos = position_of.get(frame.pts)
                    if pos is None:  # a frame whose packet the demuxer marked as discarded
                        continue
                if pos < wanted[0]:  # before the first frame wanted (e.g. from the keyframe a seek landed on)
                    continue
                if next_pos is None:
                    if pos > wanted[0]:
                        if seek:
                            raise _SeekMissed()
                        raise _TimestampsDisagree()
                    next_pos = pos
                if pos != next_pos:  # bogus pts, or a frame the decoder dropped: order mode tells which
                    raise _TimestampsDisagree()
                next_pos = pos + 1
                if pos == wanted[j]:
                    use(pos, frame)
                    j += 1
                    if j == len(wanted):
                        return
        except av.error.FFmpegError as exc:
            at = next_pos if next_pos is not None else wanted[0]
            raise DecodeError(f"{name}: corrupt: undecodable data near frame {at} of {total} "
                              f"({exc.strerror})") from None
        if position_of is not None:  # frames missing by pts: let decoder order have the last word
            raise _TimestampsDisagree()
        # The packets were all there (pass 1), so frames the decoder did not give are damaged ones.
        decoded = next_pos if next_pos is not None else 0
        raise DecodeError(f"{name}: corrupt: only {decoded} of {total} frames decode")


class _Frames:
    """Converts decoded frames to upright RGB at the bounded size and files them into preallocated arrays."""

    def __init__(self, max_side: int, slots: dict[int, list[tuple[int, int]]], counts: tuple[int, int]):
        self.max_side = max_side
        self.slots = slots  # source index -> [(0 for sample_frames or 1 for track_frames, row)]
        self.counts = counts  # rows of (sample_frames, track_frames)
        self.arrays: Optional[tuple[np.ndarray, np.ndarray]] = None

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


def _info(name, tl, first, n, frames: _Frames) -> VideoInfo:
    times = tl.times[first:first + n]
    return VideoInfo(path=name, width=frames.width, height=frames.height, fps=tl.fps, num_frames=n,
                     duration=float(times[-1] - times[0]) + 1.0 / tl.fps, rotation=(-90 * frames.turns) % 360,
                     first_index=first, start_time=float(times[0]))


# ---------------------------------------------------------------- public API


def probe(path: Source, start: Optional[float] = None, end: Optional[float] = None) -> VideoInfo:
    """Facts of a clip (all frames, or those in [start, end) seconds) without decoding more than its first frame."""
    name = _name(path)
    try:
        return _probe(path, name, start, end, by_order=False)
    except _TimestampsDisagree:
        return _probe(path, name, start, end, by_order=True)


def _probe(path, name, start, end, by_order) -> VideoInfo:
    tl = _scan(path, name, end, by_order)
    first, n = _clip_range(tl, name, start, end)
    frames = _Frames(max_side=1, slots={}, counts=(0, 0))
    _decode_wanted(path, name, tl, np.array([first]), lambda i, f: frames.start(f))
    return _info(name, tl, first, n, frames)


def decode_clip(path: Source, num_samples: int = 100, track_fps: float = 10.0, start: Optional[float] = None,
                end: Optional[float] = None, max_side: int = 640, extra_indices: Iterable[int] = (),
                threads: int = 1) -> DecodedClip:
    """Decode the T samples and the tracking frames of a clip, upright, longer side at most max_side.

    extra_indices: absolute source frame indices that must be tracking frames too (grounding frames of given
    boxes); one outside the clip is a DecodeError. threads: decoder threads (0 = FFmpeg's choice).
    """
    if num_samples < 1 or track_fps <= 0 or max_side < 1:
        raise ValueError(f"decode_clip needs num_samples >= 1, track_fps > 0, max_side >= 1 "
                         f"(got {num_samples}, {track_fps}, {max_side})")
    name = _name(path)
    extra = np.asarray(list(extra_indices), dtype=np.int64)
    try:
        return _decode_clip(path, name, num_samples, track_fps, start, end, max_side, extra, threads, False)
    except _TimestampsDisagree:
        return _decode_clip(path, name, num_samples, track_fps, start, end, max_side, extra, threads, True)


def _decode_clip(path, name, num_samples, track_fps, start, end, max_side, extra, threads, by_order) -> DecodedClip:
    tl = _scan(path, name, end, by_order)
    first, n = _clip_range(tl, name, start, end)
    outside = extra[(extra < first) | (extra >= first + n)]
    if len(outside):
        raise DecodeError(f"{name}: frame {int(outside[0])} asked for tracking is outside the clip "
                          f"(source frames {first}-{first + n - 1})")
    sample_idx = first + sample_positions(n, num_samples)
    track_idx = np.union1d(first + tracking_positions(n, tl.fps, track_fps), extra).astype(np.int64)

    slots: dict[int, list[tuple[int, int]]] = {}
    for row, index in enumerate(sample_idx):
        slots.setdefault(int(index), []).append((0, row))
    for row, index in enumerate(track_idx):
        slots.setdefault(int(index), []).append((1, row))
    frames = _Frames(max_side, slots, counts=(len(sample_idx), len(track_idx)))
    _decode_wanted(path, name, tl, np.array(sorted(slots), dtype=np.int64), frames, threads)

    t0 = tl.times[first]
    samples, tracks = frames.arrays
    return DecodedClip(
        info=_info(name, tl, first, n, frames),
        scale=frames.scale,
        sample_indices=sample_idx,
        sample_times=tl.times[sample_idx] - t0,
        sample_frames=samples,
        track_indices=track_idx,
        track_times=tl.times[track_idx] - t0,
        track_frames=tracks,
    )
