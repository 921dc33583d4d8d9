"""Tracking a long clip in overlapping windows, stitched into whole-clip tracks (the track stage's long-clip path).

Windows [a, a + window) start every window - overlap frames until one reaches the clip's end, so the tracker never
sees more than `window` frames, and the frames are decoded a window at a time (`frames[a:b]`, bounded memory).

- An object is tracked in its home window (of those holding its query frame, the one whose middle is nearest)
  with its real query.
- It is carried into the next window (forward) by re-querying each of its points inside the two windows' overlap,
  at the latest overlap frame where the point is visible; into the previous window (backward) at the earliest
  such frame. That frame is the point's handover frame. A point visible nowhere in the overlap is handed over at
  the overlap frame nearest its query and stays not visible from there on: a query on a hidden point would follow
  whatever covers it.
- Which window gives a frame's value (exactly one per frame and point): the home window gives its own frames; past
  a handover frame (later frames going forward, earlier ones going backward) the next window gives them. The
  handover frame itself keeps the value of the window nearer the query: the value the next window was asked to
  start from. So each object's query frame keeps its home window's value, the query itself.
- Windows are visited forward once (from the first home window), then backward from the last home window but one
  down to the first, each only when some object needs it: every window is decoded at most twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from annotate.errors import ConfigError

# frames (W, h, w, 3), points (M, K, 2) continuous px at query frames (M,) counted in the window ->
# tracks (M, K, W, 2), visibility (M, K, W) with the inside-frame rule applied.
TrackFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def check_windows(window: int, overlap: int) -> None:
    """One-line ConfigErrors for track.window / track.overlap values that cannot be windows."""
    if window < 0:
        raise ConfigError(f"track.window: must be >= 0 (0 tracks the whole clip in one call), got {window}")
    if window and not 1 <= overlap < window:
        raise ConfigError(f"track.overlap: must be at least 1 and below track.window={window} (objects are handed "
                          f"over between windows inside their overlap), got {overlap}")


def window_spans(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[(a, b)]: windows [a, b) starting every window - overlap frames, the last one ending at num_frames."""
    spans = [(0, min(window, num_frames))]
    while spans[-1][1] < num_frames:
        a = spans[-1][0] + window - overlap
        spans.append((a, min(a + window, num_frames)))
    return spans


def home_windows(spans: list[tuple[int, int]], query_frames: np.ndarray) -> np.ndarray:
    """(N,) index of each query's home window: of the windows holding it, the one whose middle is nearest."""
    homes = []
    for q in query_frames:
        holding = [(abs(q - (a + b - 1) / 2), i) for i, (a, b) in enumerate(spans) if a <= q < b]
        homes.append(min(holding)[1])  # ties go to the earlier window
    return np.asarray(homes, dtype=np.int64)


@dataclass
class _Query:
    """One object's points (some or all) queried at one frame of a window, and the frames its result fills."""

    obj: int
    points: np.ndarray  # (k,) indices of the object's points
    frame: int  # query frame, counted in the clip
    xy: np.ndarray  # (k, 2) continuous px at `frame`
    fills: tuple[int, int]  # [lo, hi) clip frames this query's result is written to
    hidden: np.ndarray  # (k,) bool: handed over where not visible, so not visible here either


def track_in_windows(track: TrackFn, frames, points: np.ndarray, query_frames: np.ndarray, window: int,
                     overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole-clip tracks (N, K, F, 2) and visibility (N, K, F) from `track` run window by window (module doc).

    frames: (F, h, w, 3) array or anything sliced like one (annotate.frames.LazyFrames); points (N, K, 2)
    continuous px at query_frames (N,).
    """
    num_frames = len(frames)
    points = np.asarray(points, dtype=np.float64)
    query_frames = np.asarray(query_frames, dtype=np.int64)
    n, k = points.shape[:2]
    spans = window_spans(num_frames, window, overlap)
    home = home_windows(spans, query_frames)
    tracks = np.zeros((n, k, num_frames, 2))
    vis = np.zeros((n, k, num_frames), dtype=bool)
    anchor = {+1: np.repeat(query_frames[:, None], k, axis=1), -1: np.repeat(query_frames[:, None], k, axis=1)}
    for i, span in enumerate(spans):  # forward
        queries = [_Query(o, np.arange(k), int(query_frames[o]), points[o], span, np.zeros(k, bool))
                   for o in np.flatnonzero(home == i)]
        if i > 0:
            queries += _handovers(np.flatnonzero(home < i), spans[i - 1], span, +1, anchor[+1], tracks, vis)
        _run(track, frames, span, queries, tracks, vis)
    for i in range(int(home.max(initial=0)) - 1, -1, -1):  # backward, where some object was homed later
        queries = _handovers(np.flatnonzero(home > i), spans[i + 1], spans[i], -1, anchor[-1], tracks, vis)
        _run(track, frames, spans[i], queries, tracks, vis)
    return tracks, vis


def _handovers(objs, done: tuple[int, int], into: tuple[int, int], step: int, anchor: np.ndarray,
               tracks: np.ndarray, vis: np.ndarray) -> list[_Query]:
    """Queries that carry `objs` from window `done` into the next window `into` (step +1: later, -1: earlier).

    Each point's handover frame lies in the overlap on the far side of its last handover (or query), `anchor`,
    which is moved to it. Points of an object that share a handover frame make one query.
    """
    lo, hi = max(done[0], into[0]), min(done[1], into[1])  # the overlap [lo, hi)
    queries = []
    for o in objs:
        frame_of, hidden = {}, {}
        for p in range(tracks.shape[1]):
            cand = np.arange(max(lo, anchor[o, p]), hi) if step > 0 else np.arange(lo, min(hi, anchor[o, p] + 1))
            seen = cand[vis[o, p, cand]]
            if step < 0:
                cand, seen = cand[::-1], seen[::-1]
            # The visible overlap frame farthest from the query; else the one nearest it.
            frame_of[p], hidden[p] = (int(seen[-1]), False) if len(seen) else (int(cand[0]), True)
            anchor[o, p] = frame_of[p]
        for r in sorted(set(frame_of.values())):
            ps = np.array([p for p in frame_of if frame_of[p] == r])
            fills = (r + 1, into[1]) if step > 0 else (into[0], r)
            queries.append(_Query(int(o), ps, r, tracks[o, ps, r], fills, np.array([hidden[p] for p in ps])))
    return queries


def _run(track: TrackFn, frames, span: tuple[int, int], queries: list[_Query], tracks: np.ndarray,
         vis: np.ndarray) -> None:
    """Track one window's queries in one call and write each result to the frames it fills."""
    if not queries:
        return  # the window is not decoded at all
    a, b = span
    k = tracks.shape[1]
    # The backends take K points per object: a query with fewer repeats its first point (results dropped).
    xy = np.stack([np.concatenate([q.xy, np.repeat(q.xy[:1], k - len(q.xy), axis=0)]) for q in queries])
    out_tracks, out_vis = track(frames[a:b], xy, np.array([q.frame - a for q in queries]))
    for m, q in enumerate(queries):
        lo, hi = q.fills
        if hi <= lo:
            continue
        count = len(q.points)
        tracks[q.obj, q.points, lo:hi] = out_tracks[m, :count, lo - a:hi - a]
        vis[q.obj, q.points, lo:hi] = out_vis[m, :count, lo - a:hi - a] & ~q.hidden[:, None]
