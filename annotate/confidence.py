"""A confidence per object: how far to trust its track, from signals every tracker backend has.

Signals, each in [0, 1] (NaN when the clip has no evidence for it):
- `fb`: forward-backward consistency of the track, checked independently of the tracker that made it: every step
  t -> t+1 where a point is visible at both is followed by pyramidal LK forward and back; a step agrees when LK
  returns within FB_TOL_PX of where it started and lands within FB_TOL_PX of the track's own next position. The
  share of agreeing steps.
- `visible`: the share of the object's point-frames that the tracker calls visible.
- `held`: one minus the share of point-frames where a point is unseen while it sits well inside the frame (further
  than EDGE_SHARE of the frame from every border). An object that leaves the frame is unseen at its edge; one that
  the tracker lost is unseen where it was dropped, in the open.
- `appearance`: the median normalised cross-correlation between each visible point's patch and its look at the
  query frame (a point that slid onto the background stops looking like itself).
- `coherence`: the object's points keep their layout: at every frame where two or more are visible, their
  pairwise distances change by one common scale (the object may grow or shrink); the share of such frames where
  no pair strays from that scale by more than COHERENCE_TOL.
- `score`: the grounding score (1 for a given box).
- `redetect`: the share of the object's re-detections (later grounding frames where its phrase was found again)
  whose box holds the object's visible points there.
- `mask_agreement` (with `confidence.propagation`): how far the points agree with an independent mask track of the
  object (annotate/propagate/agreement.py).
fb, appearance and coherence are shrunk towards 0.5 by their amount of evidence (`shrunk`). `confidence` is the mean of
the available signals, each first mapped through its own floor and ceiling
(SIGNAL_RANGES) so that one weak signal weighs as much as another. The ranges and the rule were chosen on the
synthetic world made harder (bench/confidence.py, which reports each signal's AUROC too).
"""

from __future__ import annotations

import cv2
import numpy as np

from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.stage import Resources, Stage

FB_TOL_PX = 2.0  # in 256-px units (TAP-Vid's scale), like the metric it predicts
NCC_PATCH = 9
EDGE_SHARE = 0.08
COHERENCE_TOL = 0.2  # a pair's distance may differ from the common scale by 20 % (rotation, non-rigid parts)
LK_WIN = 15
PRIOR_OBSERVATIONS = 5  # fb, appearance and coherence are shrunk towards 0.5 as if seen this many more times
# (floor, ceiling) of each signal: below the floor it counts 0, above the ceiling 1.
SIGNAL_RANGES = {
    "fb": (0.5, 0.95),
    "visible": (0.2, 0.8),
    "held": (0.5, 0.95),
    "appearance": (0.3, 0.9),
    "coherence": (0.5, 0.95),
    "score": (0.3, 0.6),
    "redetect": (0.3, 0.9),
    "mask_agreement": (0.5, 0.9),  # set by the propagate stage (annotate/propagate) when confidence.propagation is on
}
SIGNALS = tuple(SIGNAL_RANGES)


CHUNK = 64  # tracking frames converted to grey at a time (a long clip's frames are decoded lazily)


def _gray(frames) -> np.ndarray:
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def fb_counts(gray: np.ndarray, tracks: np.ndarray, vis: np.ndarray, tol: float) -> tuple[int, int]:
    """(agreeing, checked) visible steps t -> t+1 within these frames: gray (f, h, w), tracks (K, f, 2), vis (K, f)."""
    agree = total = 0
    kw = dict(winSize=(LK_WIN, LK_WIN), maxLevel=2)
    for t in range(gray.shape[0] - 1):
        both = vis[:, t] & vis[:, t + 1]
        if not both.any():
            continue
        p0 = (tracks[both, t] - 0.5).astype(np.float32).reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[t + 1], p0, None, **kw)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(gray[t + 1], gray[t], p1, None, **kw)
        ok = (st1.ravel() == 1) & (st2.ravel() == 1)
        ok &= np.linalg.norm((back - p0).reshape(-1, 2), axis=1) <= tol
        ok &= np.linalg.norm(p1.reshape(-1, 2) + 0.5 - tracks[both, t + 1], axis=1) <= tol
        agree += int(ok.sum())
        total += int(both.sum())
    return agree, total


def patches(gray: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(n, p, p) zero-mean float patches of a grey frame around continuous points xy (n, 2)."""
    out = [cv2.getRectSubPix(gray, (NCC_PATCH, NCC_PATCH), (float(x) - 0.5, float(y) - 0.5), patchType=cv2.CV_32F)
           for x, y in xy]
    out = np.stack(out) if out else np.zeros((0, NCC_PATCH, NCC_PATCH), np.float32)
    return out - out.mean(axis=(1, 2), keepdims=True)


def ncc_values(gray: np.ndarray, tracks: np.ndarray, vis: np.ndarray, refs: np.ndarray, skip: int) -> list[float]:
    """NCC of each visible point's patch (frames of this chunk; chunk frame `skip` is the query) with refs (K, p, p)."""
    values = []
    ref_norm = np.linalg.norm(refs.reshape(len(refs), -1), axis=1)
    for t in range(gray.shape[0]):
        seen = np.flatnonzero(vis[:, t])
        if t == skip or not len(seen):
            continue
        cur = patches(gray[t], tracks[seen, t])
        denom = ref_norm[seen] * np.linalg.norm(cur.reshape(len(cur), -1), axis=1)
        num = (refs[seen] * cur).sum(axis=(1, 2))
        values += [float(n / d) if d > 1e-6 else 0.0 for n, d in zip(num, denom)]
    return values


def coherence_signal(tracks: np.ndarray, vis: np.ndarray, query: int) -> float:
    """Share of frames (two or more points visible) whose pairwise distances follow one common scale."""
    k = tracks.shape[0]
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    d0 = np.array([np.linalg.norm(tracks[a, query] - tracks[b, query]) for a, b in pairs])
    good = total = 0
    for t in range(tracks.shape[1]):
        seen = [(i, a, b) for i, (a, b) in enumerate(pairs) if vis[a, t] and vis[b, t] and d0[i] > 1e-6]
        if not seen or t == query:
            continue
        ratios = np.array([np.linalg.norm(tracks[a, t] - tracks[b, t]) / d0[i] for i, a, b in seen])
        scale = np.median(ratios)
        total += 1
        good += int(scale > 0 and np.all(np.abs(ratios / scale - 1.0) <= COHERENCE_TOL))
    return shrunk(good / total, total) if total else float("nan")


def held_signal(tracks: np.ndarray, vis: np.ndarray, width: int, height: int) -> float:
    """1 - share of point-frames unseen while well inside the frame."""
    mx, my = EDGE_SHARE * width, EDGE_SHARE * height
    x, y = tracks[..., 0], tracks[..., 1]
    deep = (x > mx) & (x < width - mx) & (y > my) & (y < height - my)
    return float(1.0 - (deep & ~vis).mean())


def redetect_signal(tracks: np.ndarray, vis: np.ndarray, redetections: list) -> float:
    """Share of re-detections (track frame, xyxy box in tracking px) whose box holds the visible points."""
    hits = total = 0
    for t, box in redetections:
        seen = vis[:, t]
        if not seen.any():
            continue
        x, y = tracks[seen, t, 0], tracks[seen, t, 1]
        inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
        total += 1
        hits += int(inside.mean() >= 0.5)
    return hits / total if total else float("nan")


def shrunk(value: float, evidence: int) -> float:
    """A share measured on `evidence` observations, pulled towards an undecided 0.5 by PRIOR_OBSERVATIONS: two
    agreeing steps of a track lost at once are not the proof that two hundred are."""
    return float((value * evidence + 0.5 * PRIOR_OBSERVATIONS) / (evidence + PRIOR_OBSERVATIONS))


def combine(signals: dict[str, float]) -> float:
    """The mean of the available signals, each mapped to [0, 1] by SIGNAL_RANGES."""
    values = []
    for name, (lo, hi) in SIGNAL_RANGES.items():
        v = signals.get(name, float("nan"))
        if np.isfinite(v):
            values.append(float(np.clip((v - lo) / (hi - lo), 0.0, 1.0)))
    return float(np.mean(values)) if values else 0.0


def object_signals(item) -> list[dict[str, float]]:
    """The signals of every object of a tracked item, in grounding order."""
    from annotate.clip import ground_to_track

    clip = item.clip
    tracks = np.asarray(item.tracks, np.float64)
    vis = np.asarray(item.track_vis, bool)
    n, _, f = vis.shape
    w, h = clip.size
    tol = FB_TOL_PX * max(w, h) / 256.0
    queries = [g.track_frame for g in item.groundings]
    refs = [patches(_gray(clip.track_frames[[q]])[0], tracks[i, :, q]) for i, q in enumerate(queries)]
    fb = np.zeros((n, 2), np.int64)
    ncc: list[list[float]] = [[] for _ in range(n)]
    for lo in range(0, max(f - 1, 1), CHUNK):  # the last chunk ends at the clip's last frame
        hi = min(f, lo + CHUNK + 1)  # one frame of overlap: the step from this chunk into the next
        gray = _gray(clip.track_frames[lo:hi])
        for i in range(n):
            fb[i] += fb_counts(gray, tracks[i, :, lo:hi], vis[i, :, lo:hi], tol)
            last = hi if hi == f else hi - 1  # the overlap frame is scored by the next chunk
            ncc[i] += ncc_values(gray[:last - lo], tracks[i, :, lo:last], vis[i, :, lo:last], refs[i], queries[i] - lo)
    out = []
    for i, g in enumerate(item.groundings):
        redets = [(t, ground_to_track(clip, np.asarray(box, np.float64).reshape(2, 2)).ravel())
                  for t, box, _ in getattr(g, "redetections", [])]
        out.append({
            "fb": shrunk(fb[i, 0] / fb[i, 1], fb[i, 1]) if fb[i, 1] else float("nan"),
            "visible": float(vis[i].mean()),
            "held": held_signal(tracks[i], vis[i], w, h),
            "appearance": shrunk(float(np.clip(np.median(ncc[i]), 0.0, 1.0)), len(ncc[i])) if ncc[i] else float("nan"),
            "coherence": coherence_signal(tracks[i], vis[i], queries[i]),
            "score": float(g.score),
            "redetect": redetect_signal(tracks[i], vis[i], redets),
        })
    return out


class ConfidenceStage(Stage):
    """Sets each object's `confidence` and `signals`; drops those below `filter.min_confidence` ("low confidence")."""

    name = "confidence"

    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, memory_gb=0.1)  # grey tracking frames, CHUNK at a time

    def version(self) -> str:
        used = [s for s in SIGNALS if s != "mask_agreement" or self.cfg.confidence.propagation != "none"]
        return f"confidence/{'+'.join(used)}"

    def setup(self) -> None:
        low = self.cfg.filter.min_confidence
        if not (isinstance(low, (int, float)) and 0.0 <= low <= 1.0):
            raise ConfigError(f"filter.min_confidence: expected a number in [0, 1], got {low!r}")

    def process_item(self, item: ClipItem) -> None:
        if item.tracks is None or len(item.tracks) != len(item.groundings):
            raise StageError(self.name, "tracks missing or not one row per object (run track first)")
        for g, signals in zip(item.groundings, object_signals(item)):
            if g.mask_agreement is not None:  # the propagate stage ran
                signals["mask_agreement"] = g.mask_agreement
            g.signals, g.confidence = signals, combine(signals)
        low = self.cfg.filter.min_confidence
        for i in reversed(range(len(item.groundings))):
            if item.groundings[i].confidence < low:
                item.drop_object(i, "low confidence")
