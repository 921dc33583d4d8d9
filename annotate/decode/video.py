"""Decode a clip with PyAV as docs/design.md's "Frames, time and coordinates" says.

Two passes over the file, neither holding more than one full-size frame:

1. demux, no decoding: the presentation timestamps (pts) of the packets give every frame's absolute source index
   (its rank in pts order) and its time, so n, the T samples and the tracking frames are known before decoding;
2. decode: each decoded frame is identified by its pts; only the frames asked for are converted to RGB, already
   resized (swscale does the YUV->RGB conversion and the area resize in one go) and turned upright.

Containers whose packets carry no usable pts (raw streams, AVI) index frames by decoder output order instead, and
a file whose decoded pts turn out to disagree with that order is re-read that way.
"""

from __future__ import annotations

import functools
import io
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

import av
import numpy as np

from annotate.clip import DecodedClip, VideoInfo
from annotate.decode.container import Source, open_video, source_name
from annotate.errors import DecodeError
from annotate.frames import FrameFiler, FrameSize, LazyFrames

_EPS = 1e-6  # seconds: a frame at exactly `start` is inside the clip despite float rounding
# AVI stores decode-order timestamps only: with B-frames its "pts" are not presentation times.
ORDER_ONLY_FORMATS = ("avi",)
_SEEK_MARGIN_S = 1.0  # seek this far before the first frame wanted, so B-frame reordering cannot skip it
_SCAN_MARGIN_S = 2.0  # demux this far past `end` (in pts) before trusting that no earlier frame can follow


# ---------------------------------------------------------------- the pure parts: which frames, which size


def sample_positions(n: int, num_samples: int) -> np.ndarray:
    """The design's sampling: round(linspace(0, n - 1, T)), positions inside the clip (first and last kept)."""
    return np.round(np.linspace(0, n - 1, num_samples)).astype(np.int64)


def tracking_positions(n: int, fps: float, track_fps: float) -> np.ndarray:
    """Every step-th position from the first, plus the last; the step keeps the rate at or under track_fps."""
    step = max(1, math.ceil(fps / track_fps - 1e-9))
    return np.unique(np.append(np.arange(0, n, step, dtype=np.int64), n - 1))


# ---------------------------------------------------------------- pass 1: the timeline, from packets alone


@dataclass
class _Timeline:
    """Every frame of the stream (up to where the scan stopped) in presentation order."""

    times: np.ndarray  # (N,) float64 seconds from the file's first frame
    pts: Optional[np.ndarray]  # (N,) int64 sorted pts; None when frames are indexed by decoder output order
    fps: float
    complete: bool = True  # False when the scan stopped past `end` before the stream's end

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
    container, stream = open_video(src, name)
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
            return _Timeline(times=np.arange(kept) / fps, pts=None, fps=fps, complete=not stopped)
        sorted_pts = np.sort(np.asarray(pts, dtype=np.int64))
        times = (sorted_pts - sorted_pts[0]).astype(np.float64) * float(tb)
        return _Timeline(times=times, pts=sorted_pts, fps=_frame_rate(stream, name, times), complete=not stopped)


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
    container, stream = open_video(src, name)
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


def _info(name, tl, first, n, frames: FrameFiler) -> VideoInfo:
    times = tl.times[first:first + n]
    return VideoInfo(path=name, width=frames.width, height=frames.height, fps=tl.fps, num_frames=n,
                     duration=float(times[-1] - times[0]) + 1.0 / tl.fps, rotation=(-90 * frames.turns) % 360,
                     first_index=first, start_time=float(times[0]))


# ---------------------------------------------------------------- public API


def probe(path: Source, start: Optional[float] = None, end: Optional[float] = None) -> VideoInfo:
    """Facts of a clip (all frames, or those in [start, end) seconds) without decoding more than its first frame."""
    name = source_name(path)
    try:
        return _probe(path, name, start, end, by_order=False)
    except _TimestampsDisagree:
        return _probe(path, name, start, end, by_order=True)


def _probe(path, name, start, end, by_order) -> VideoInfo:
    tl = _scan(path, name, end, by_order)
    first, n = _clip_range(tl, name, start, end)
    frames = FrameFiler(sizes=(), slots={}, counts=())
    _decode_wanted(path, name, tl, np.array([first]), lambda i, f: frames.start(f))
    return _info(name, tl, first, n, frames)


def decode_clip(path: Source, num_samples: int = 100, track_fps: float = 10.0, start: Optional[float] = None,
                end: Optional[float] = None, max_side: int = 640, extra_indices: Iterable[int] = (),
                threads: int = 1, resident_frames: Optional[int] = None, track_max_side: Optional[int] = None,
                ground_size: Optional[FrameSize] = None, ground_every_n: int = 0) -> DecodedClip:
    """Decode the T samples (longer side at most max_side) and the tracking frames (at most track_max_side, else
    max_side) of a clip, upright, never upscaled.

    extra_indices: absolute source frame indices that must be tracking frames too (grounding frames of given
    boxes); one outside the clip is a DecodeError. threads: decoder threads (0 = FFmpeg's choice).
    resident_frames: a clip with more tracking frames than this gets them as a LazyFrames (decoded when indexed)
    instead of an array; None holds them all.
    ground_size: decode grounding frames at this size too: tracking frames 0, ground_every_n, 2 * ground_every_n ...
    (none when 0) and those of extra_indices. None: the clip grounds on its tracking frames.
    """
    if num_samples < 1 or track_fps <= 0 or max_side < 1 or (track_max_side is not None and track_max_side < 1):
        raise ValueError(f"decode_clip needs num_samples >= 1, track_fps > 0, max_side >= 1, track_max_side >= 1 "
                         f"(got {num_samples}, {track_fps}, {max_side}, {track_max_side})")
    name = source_name(path)
    extra = np.asarray(list(extra_indices), dtype=np.int64)
    sizes = (FrameSize(max_side), FrameSize(track_max_side or max_side), ground_size)
    args = (num_samples, track_fps, start, end, sizes, extra, threads, resident_frames, ground_every_n)
    try:
        return _decode_clip(path, name, *args, by_order=False)
    except _TimestampsDisagree:
        return _decode_clip(path, name, *args, by_order=True)


def grounding_positions(track_idx: np.ndarray, every_n: int, extra: np.ndarray) -> np.ndarray:
    """Positions into the tracking frames that are grounding frames: every every_n-th from 0 (none when 0), and
    those of the extra source indices."""
    grid = np.arange(0, len(track_idx), every_n, dtype=np.int64) if every_n > 0 else np.zeros(0, np.int64)
    return np.union1d(grid, np.searchsorted(track_idx, extra)).astype(np.int64)


def _decode_clip(path, name, num_samples, track_fps, start, end, sizes, extra, threads, resident_frames,
                 ground_every_n, by_order) -> DecodedClip:
    tl = _scan(path, name, end, by_order)
    first, n = _clip_range(tl, name, start, end)
    outside = extra[(extra < first) | (extra >= first + n)]
    if len(outside):
        raise DecodeError(f"{name}: frame {int(outside[0])} asked for tracking is outside the clip "
                          f"(source frames {first}-{first + n - 1})")
    sample_idx = first + sample_positions(n, num_samples)
    track_idx = np.union1d(first + tracking_positions(n, tl.fps, track_fps), extra).astype(np.int64)
    ground_size = sizes[2]
    ground_pos = grounding_positions(track_idx, ground_every_n, extra) if ground_size is not None else None
    resident = resident_frames is None or len(track_idx) <= resident_frames

    # Arrays: 0 the samples, 1 the tracking frames, 2 the grounding frames (1 and 2 only when resident).
    slots: dict[int, list[tuple[int, int]]] = {}
    rows = (sample_idx, track_idx if resident else (),
            track_idx[ground_pos] if resident and ground_pos is not None else ())
    for which, indices in enumerate(rows):
        for row, index in enumerate(indices):
            slots.setdefault(int(index), []).append((which, row))
    frames = FrameFiler((sizes[0], sizes[1], ground_size or sizes[1]), slots, counts=tuple(len(r) for r in rows))
    _decode_wanted(path, name, tl, np.array(sorted(slots), dtype=np.int64), frames, threads)

    t0 = tl.times[first]
    samples, tracks, grounds = frames.arrays
    if not resident:
        source = _reopenable(path)
        tracks = _lazy(source, name, tl, track_idx, sizes[1], threads, frames)
        if ground_pos is not None:
            grounds = _lazy(source, name, tl, track_idx[ground_pos], ground_size, threads, frames)
    return DecodedClip(
        info=_info(name, tl, first, n, frames),
        scale=frames.scales[0],
        sample_indices=sample_idx,
        sample_times=tl.times[sample_idx] - t0,
        sample_frames=samples,
        track_indices=track_idx,
        track_times=tl.times[track_idx] - t0,
        track_frames=tracks,
        track_scale=frames.scales[1],
        ground_positions=ground_pos,
        ground_frames=grounds if ground_pos is not None else None,
        ground_scale=frames.scales[2] if ground_pos is not None else None,
    )


def _lazy(source, name: str, tl: _Timeline, indices: np.ndarray, size: FrameSize, threads: int,
          first: FrameFiler) -> LazyFrames:
    """The frames of source `indices` at `size`, decoded when indexed; `first` gave the video's displayed size."""
    w, h, _ = size.fit(first.width, first.height)
    return LazyFrames((len(indices), h, w, 3), functools.partial(_read_frames, source, name, tl, indices, size,
                                                                  threads))


def _reopenable(src: Source) -> Union[str, os.PathLike, bytes]:
    """What a lazy reader opens again: the path, or the compressed bytes of an in-memory file (a tar member)."""
    if isinstance(src, (str, os.PathLike)):
        return src
    if isinstance(src, io.BytesIO):
        return src.getvalue()
    src.seek(0)
    return src.read()


def _read_frames(source, name: str, tl: _Timeline, indices: np.ndarray, size: FrameSize, threads: int,
                 positions: np.ndarray) -> np.ndarray:
    """LazyFrames' reader: the frames at `positions` (sorted, unique) of source `indices`, in one decoding pass."""
    wanted = indices[positions]
    filer = FrameFiler(size, {int(i): [(0, row)] for row, i in enumerate(wanted)}, counts=(len(wanted),))
    try:
        _decode_wanted(io.BytesIO(source) if isinstance(source, bytes) else source, name, tl, wanted, filer, threads)
    except _TimestampsDisagree:  # the first pass read every frame of the clip in this order: the file changed
        raise DecodeError(f"{name}: corrupt: frames near {int(wanted[0])} decode out of the order first "
                          "read") from None
    return filer.arrays[0]


def video_duration(path: Source, start: Optional[float] = None, limit: float = math.inf) -> tuple[float, bool]:
    """(seconds of video from `start` on, exact?) without decoding a frame.

    The stream's stated duration (else the container's) when the file states one; else the frames' timestamps
    from a demux scan that stops soon after start + limit seconds (then the value is a lower bound: exact False).
    """
    name = source_name(path)
    offset = start or 0.0
    container, stream = open_video(path, name)
    with container:
        stated = _stated_seconds(container, stream)
    if stated is not None:
        return stated - offset, True
    tl = _scan(path, name, offset + limit if math.isfinite(limit) else None, by_order=False)
    return float(tl.times[-1]) + 1.0 / tl.fps - offset, tl.complete


def _stated_seconds(container, stream) -> Optional[float]:
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None
