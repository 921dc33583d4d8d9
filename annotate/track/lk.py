"""`track.backend: lk`, the embedded tracker: pyramidal Lucas-Kanade with forward-backward and appearance checks,
re-acquisition, and lost points that never run away (see `track_lk`). Coordinates in and out are continuous pixels; OpenCV's are
pixel centres on integers, hence the 0.5 shifts."""

from __future__ import annotations

import cv2
import numpy as np

from annotate.frames import inside_frame
from annotate.stage import Resources
from annotate.track.base import TrackStage

# Patch side (px) of the appearance check; small enough to sit inside an object, big enough to be distinctive.
NCC_PATCH = 9
# A followed point whose patch correlates less than this with its look at the query frame is lost (covered).
MIN_NCC = 0.5
# A query patch with a standard deviation below FLAT_STD grey levels is flat (a plain surface): correlation means
# nothing there, so its point is lost when the mean absolute difference to it exceeds FLAT_MAX_DIFF instead.
FLAT_STD = 4.0
FLAT_MAX_DIFF = 12.0
# A followed point is refined by LK from the query frame when that lands at most this far from its frame-to-frame
# step; that LK uses a small window and no pyramid: the start is close, and a wide window straddles object borders.
DRIFT_MAX_PX = 2.0
REFINE_WIN = 11
# Re-acquisition searches a lost point's query-frame look (a REACQUIRE_PATCH square) within a radius of its guessed
# position that grows with the frames since it was last seen (base px, px per frame, cap px), and accepts a match
# whose normalised correlation (OpenCV's TM_CCOEFF_NORMED) is at least REACQUIRE_MIN_SCORE (lower lets textured
# occluders pass for the point). All values chosen on generated clips with crossing textured occluders, exits and
# 20 % scale change, then checked on the synthetic world's defaults (annotate.synthetic).
REACQUIRE_PATCH = 15
REACQUIRE_RADIUS = (6, 2, 40)
REACQUIRE_MIN_SCORE = 0.8
# An object lost whole is re-found only as 2+ points whose pairwise distances agree with one scale to this share.
REJOIN_TOL = 0.25
# ... or as one point found near where it was lost: base px plus px per frame lost (an object moving at up to that
# speed behind an occluder; a real pilot's backpack was falsely matched 52 px away after 10 frames).
LONE_REJOIN_PX = (10.0, 3.0)
_LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)  # 30 iterations or 0.01 px



def track_lk(gray: np.ndarray, points: np.ndarray, query_frames: np.ndarray, *, win_size: int = 21,
             max_level: int = 3, fb_threshold: float = 1.5, min_ncc: float = MIN_NCC) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade from each object's query frame forward to the end and backward to the start.

    gray (F, h, w) uint8; points (N, K, 2) continuous px at query_frames (N,). Returns tracks (N, K, F, 2) float64
    continuous px and vis (N, K, F) bool. The query itself is visible (if inside the frame). Objects that share a
    query frame are tracked together, one OpenCV call per step.

    Each step, frame to frame:
    - follow: LK forward, then back; the point stays visible only if LK finds it both ways (status 1), the
      forward-backward error is <= fb_threshold, it is inside the frame, and its patch still looks like it did at
      the query frame (NCC >= min_ncc; the same brightness on a flat patch). The appearance check is what notices
      occlusion: a textured occluder that slides over a point moves coherently, so LK follows it with a small
      forward-backward error.
    - anchor: a followed point is refined by LK from the query frame itself (small window, no pyramid) when that
      lands within DRIFT_MAX_PX, so the small error of each step does not add up over the clip.
    - lost: the point is not visible, and its reported position moves only with evidence: with the median step of
      the object's points still followed (the object is mostly rigid), else it stays where it was last known. A
      fabricated path is worse than an honest "unknown": the trainer reads positions where visibility is unused.
    - re-acquire: every frame after loss, the query-frame patch of the point is searched (OpenCV template
      matching) in a window around a guess (the reported position, or where the point's own smoothed velocity
      would have carried it, kept within the object's extent of the reported position; the guess is never
      reported); a match further than that extent from the reported position is something else and is refused that grows with the frames since it was last seen; a
      match with
      correlation >= REACQUIRE_MIN_SCORE is refined by LK from the query frame and, if the appearance check
      passes, the point is visible again there. A point re-acquired moves the guesses of its still-lost siblings.
    """
    gray = np.asarray(gray)
    points = np.asarray(points, dtype=np.float64)
    query_frames = np.asarray(query_frames, dtype=np.int64)
    n, k = points.shape[:2]
    num_frames = len(gray)
    tracks = np.zeros((n, k, num_frames, 2))
    vis = np.zeros((n, k, num_frames), dtype=bool)
    lk = _LK(win_size, max_level, fb_threshold, min_ncc)
    for q in np.unique(query_frames):
        objs = np.flatnonzero(query_frames == q)
        pts = points[objs].reshape(-1, 2) - 0.5  # OpenCV: pixel centres on integers
        groups = np.repeat(np.arange(len(objs)), k)
        fwd_pos, fwd_vis = lk.propagate(gray, list(range(q, num_frames)), pts, groups)
        bwd_pos, bwd_vis = lk.propagate(gray, list(range(q, -1, -1)), pts, groups)
        pos = np.concatenate([bwd_pos[::-1], fwd_pos[1:]])  # (F, M, 2), the query frame once
        v = np.concatenate([bwd_vis[::-1], fwd_vis[1:]])
        tracks[objs] = (pos + 0.5).transpose(1, 0, 2).reshape(len(objs), k, num_frames, 2)
        vis[objs] = v.T.reshape(len(objs), k, num_frames)
    return tracks, vis


class _LK:
    """One direction of `track_lk` (positions in OpenCV coords: pixel centres on integers)."""

    def __init__(self, win_size: int, max_level: int, fb_threshold: float, min_ncc: float):
        self.win = int(win_size)
        self.max_level = int(max_level)
        self.fb_threshold = float(fb_threshold)
        self.min_ncc = float(min_ncc)

    def flow(self, a: np.ndarray, b: np.ndarray, pts: np.ndarray, init: np.ndarray | None = None,
             win: int | None = None, max_level: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """LK a -> b (from `init` when given) and back; returns (positions in b, found both ways within fb)."""
        win = win or self.win
        kw = dict(winSize=(win, win), maxLevel=self.max_level if max_level is None else max_level,
                  criteria=_LK_CRITERIA, flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        p0 = np.ascontiguousarray(pts, dtype=np.float32).reshape(-1, 1, 2)
        p1 = (p0 if init is None else np.ascontiguousarray(init, dtype=np.float32).reshape(-1, 1, 2)).copy()
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, p1, **kw)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, p0.copy(), **kw)
        p1, back = p1.reshape(-1, 2).astype(np.float64), back.reshape(-1, 2).astype(np.float64)
        ok = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & np.all(np.isfinite(p1), axis=1)
        return p1, ok & (np.linalg.norm(back - pts, axis=1) <= self.fb_threshold)

    def propagate(self, gray: np.ndarray, order: list[int], pts0: np.ndarray, groups: np.ndarray):
        """Track pts0 (M, 2), given at frame order[0], through the frames `order`: (len(order), M, 2), (.., M)."""
        h, w = gray.shape[1:]
        m = len(pts0)
        out_pos = np.zeros((len(order), m, 2))
        out_vis = np.zeros((len(order), m), dtype=bool)
        query = gray[order[0]]
        template = _patches(query, pts0)  # how each point looks at its query frame
        pos = pts0.astype(np.float64).copy()
        seen = _inside_cv(pos, w, h)
        last_t = np.zeros(m, dtype=np.int64)  # step at which each point was last seen
        vel = np.zeros_like(pos)  # smoothed step while followed
        shown = pos.copy()  # the reported positions: moved only by evidence (see track_lk, "lost")
        reach = _reach(pts0, groups)  # how far a lost point's search may stray from where it is reported
        out_pos[0], out_vis[0] = pos, seen
        for t in range(1, len(order)):
            frame = gray[order[t]]
            nxt, ok = self.flow(gray[order[t - 1]], frame, pos)
            ok &= _inside_cv(nxt, w, h) & self._looks_alike(template, _patches(frame, nxt))
            followed = seen & ok
            new, report = pos.copy(), shown.copy()
            new[followed] = self._anchored(query, frame, pts0[followed], nxt[followed])
            lost = ~followed
            if lost.any():
                zero = np.zeros((lost.sum(), 2))
                sibling_step = _group_median(nxt - pos, followed, lost, groups, np.full((lost.sum(), 2), np.nan))
                moved = np.isfinite(sibling_step[:, 0])
                # The search guess may follow the point's own velocity; the report only its followed siblings.
                new[lost] = pos[lost] + np.where(moved[:, None], sibling_step, vel[lost])
                report[lost] = shown[lost] + np.where(moved[:, None], sibling_step, zero)
                new[lost] = _leash(new[lost], report[lost], reach[lost])
                found, back = self._reacquire(query, frame, pts0, template, new, lost, t - last_t)
                # A match further from the object than its own size is something else that looks alike; an object
                # lost whole comes back only as two or more points in their own layout (one patch of texture can
                # match anywhere).
                back &= np.linalg.norm(found - report, axis=1) <= reach
                back &= _rejoined(found, report, pts0, back, followed, groups, t - last_t)
                still = lost & ~back
                # A sibling came back: a still-lost point moves as far as the siblings' reported positions had to
                # move to meet them (measured on the reports, never on the drifting search guesses), and its search
                # restarts from there.
                step_back = _group_median(found - report, back, still, groups, np.full((still.sum(), 2), np.nan))
                regained = np.flatnonzero(still)[np.isfinite(step_back[:, 0])]
                report[regained] += step_back[np.isfinite(step_back[:, 0])]
                new[regained] = report[regained]
                new[back] = found[back]
                followed |= back
            report[followed] = new[followed]
            step = new[followed] - pos[followed]
            moving = np.any(vel[followed] != 0, axis=1, keepdims=True)
            vel[followed] = np.where(moving, 0.5 * vel[followed] + 0.5 * step, step)
            last_t[followed] = t
            pos, seen, shown = new, followed, report
            out_pos[t], out_vis[t] = shown, seen
        return out_pos, out_vis

    def _looks_alike(self, template: np.ndarray, patch: np.ndarray) -> np.ndarray:
        """Appearance check: NCC >= min_ncc for a textured template; for a flat one (NCC is noise there), the same
        brightness within FLAT_MAX_DIFF on average."""
        flat = template.std(axis=(1, 2)) < FLAT_STD
        alike = _ncc(template, patch) >= self.min_ncc
        same = np.abs(template - patch).mean(axis=(1, 2)) <= FLAT_MAX_DIFF
        return np.where(flat, same, alike)

    def _anchored(self, query, frame, query_pts, pts):
        """Refine positions by LK from the query frame where that lands within DRIFT_MAX_PX of them."""
        if len(pts) == 0:
            return pts
        ref, ok = self.flow(query, frame, query_pts, init=pts, win=REFINE_WIN, max_level=0)
        ok &= np.linalg.norm(ref - pts, axis=1) <= DRIFT_MAX_PX
        return np.where(ok[:, None], ref, pts)

    def _reacquire(self, query, frame, pts0, template, guess, lost, frames_lost):
        """Search each lost point's query-frame look near its guess; returns (positions, who came back)."""
        h, w = frame.shape
        half = REACQUIRE_PATCH // 2
        cand = guess.copy()
        matched = np.zeros(len(lost), dtype=bool)
        for i in np.flatnonzero(lost):
            radius = int(min(REACQUIRE_RADIUS[0] + REACQUIRE_RADIUS[1] * frames_lost[i], REACQUIRE_RADIUS[2]))
            cx, cy = np.rint(guess[i]).astype(int)
            x0, y0 = max(cx - radius - half, 0), max(cy - radius - half, 0)
            x1, y1 = min(cx + radius + half + 1, w), min(cy + radius + half + 1, h)
            if x1 - x0 < REACQUIRE_PATCH or y1 - y0 < REACQUIRE_PATCH:
                continue  # the guess is off the frame
            tmpl = cv2.getRectSubPix(query, (REACQUIRE_PATCH, REACQUIRE_PATCH), (float(pts0[i, 0]), float(pts0[i, 1])),
                                     patchType=cv2.CV_32F)
            if tmpl.std() < 1e-3:
                continue  # a flat patch matches anywhere
            score = cv2.matchTemplate(frame[y0:y1, x0:x1].astype(np.float32), tmpl, cv2.TM_CCOEFF_NORMED)
            _, best, _, (bx, by) = cv2.minMaxLoc(score)
            if best >= REACQUIRE_MIN_SCORE:
                cand[i] = (x0 + bx + half, y0 + by + half)
                matched[i] = True
        found = guess.copy()
        back = np.zeros(len(lost), dtype=bool)
        idx = np.flatnonzero(matched)
        if len(idx):
            pts = self._anchored(query, frame, pts0[idx], cand[idx])
            ok = _inside_cv(pts, w, h) & self._looks_alike(template[idx], _patches(frame, pts))
            back[idx] = ok
            found[idx[ok]] = pts[ok]
        return found, back


def _rejoined(found: np.ndarray, report: np.ndarray, pts0: np.ndarray, back: np.ndarray, followed: np.ndarray,
              groups: np.ndarray, frames_lost: np.ndarray) -> np.ndarray:
    """Which re-found points to keep: all where a sibling is still followed (it vouches for the place); where the
    whole object was lost, a set of two or more whose pairwise distances keep their query-frame ratios (one common
    scale, each pair within REJOIN_TOL), or a lone point found near where it was lost (LONE_REJOIN_PX, growing with
    the frames it was lost); an object of one point keeps its match."""
    keep = back.copy()
    for g in np.unique(groups[back]):
        member = groups == g
        if (followed & member).any() or member.sum() == 1:
            continue
        idx = np.flatnonzero(back & member)
        if len(idx) < 2:
            near = LONE_REJOIN_PX[0] + LONE_REJOIN_PX[1] * frames_lost[idx]
            keep[idx] = np.linalg.norm(found[idx] - report[idx], axis=1) <= near
            continue
        pairs = [(a, b) for i, a in enumerate(idx) for b in idx[i + 1:]]
        ratios = np.array([np.linalg.norm(found[a] - found[b]) / max(np.linalg.norm(pts0[a] - pts0[b]), 1e-6)
                           for a, b in pairs])
        scale = np.median(ratios)
        if not (scale > 0 and np.all(np.abs(ratios / scale - 1.0) <= REJOIN_TOL) and 0.5 <= scale <= 2.0):
            keep[idx] = False
    return keep


def _reach(pts0: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(M,) per point: its object's extent at the query frame (the largest distance between two of its points),
    at least REACQUIRE_RADIUS's cap."""
    out = np.full(len(pts0), float(REACQUIRE_RADIUS[2]))
    for g in np.unique(groups):
        member = groups == g
        p = pts0[member]
        extent = np.max(np.linalg.norm(p[:, None] - p[None], axis=-1)) if len(p) > 1 else 0.0
        out[member] = max(out[member][0], extent)
    return out


def _leash(guess: np.ndarray, anchor: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Guesses pulled back to within `reach` of their anchors (a velocity guess must not run off with the camera)."""
    d = guess - anchor
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return np.where(n > reach[:, None], anchor + d * (reach[:, None] / np.maximum(n, 1e-9)), guess)


def _group_median(disp, donors, takers, groups, fallback):
    """For each taker point: the median of `disp` over the donor points of its object, else its `fallback` row."""
    out = np.array(fallback, dtype=np.float64, copy=True).reshape(-1, 2)
    taker_groups = groups[takers]
    for g in np.unique(taker_groups):
        d = donors & (groups == g)
        if d.any():
            out[taker_groups == g] = np.median(disp[d], axis=0)
    return out


def _inside_cv(pos: np.ndarray, w: int, h: int) -> np.ndarray:
    """Inside the frame, for OpenCV coords (continuous minus 0.5)."""
    return inside_frame(pos + 0.5, w, h)


def _patches(img: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(M, NCC_PATCH, NCC_PATCH) float32 sub-pixel patches of img around pos (OpenCV coords); borders replicate."""
    out = np.zeros((len(pos), NCC_PATCH, NCC_PATCH), dtype=np.float32)
    for i, (x, y) in enumerate(pos):
        if np.isfinite(x) and np.isfinite(y):
            out[i] = cv2.getRectSubPix(img, (NCC_PATCH, NCC_PATCH), (float(x), float(y)), patchType=cv2.CV_32F)
    return out


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of matching patches (M, p, p) -> (M,); a flat patch correlates 0."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 1e-6, (a * b).sum(axis=1) / np.maximum(den, 1e-6), 0.0)


class LKTracker(TrackStage):
    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, num_gpus=0.0, memory_gb=0.2)  # one window of grey frames and its pyramids

    def version(self) -> str:
        return f"lk/opencv-{cv2.__version__}"

    def track(self, frames, points, query_frames):
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
        t = self.cfg.track
        return track_lk(gray, points, query_frames, win_size=t.win_size, max_level=t.max_level,
                        fb_threshold=t.fb_threshold_px)
