"""The `mask_agreement` signal: do an object's point track and an independent mask track of it tell one story?

A propagator (a video segmenter started from the object's mask on its grounding frame) gives, per tracking frame, a
mask and whether the object is there. Two shares compare it with the points:
- inside: of the point-frames the tracker calls visible where the mask says the object is present, the share that
  fall inside the mask (grown by a small tolerance, so a point on the object's rim still counts);
- presence: the share of frames where the two agree on the object being there at all (some point visible <-> mask
  present).
`mask_agreement` = inside x presence: a track that slid onto the background fails the first, one that claims an
object the mask lost (or misses one it holds) fails the second. Counts are summed window by window, so a long clip's
masks are never held at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TOL_PX = 2.0  # in 256-px units, like the confidence's forward-backward tolerance


@dataclass
class AgreementCounts:
    inside: int = 0  # visible point-frames inside the present mask
    claimed: int = 0  # visible point-frames where the mask is present
    agree: int = 0  # frames where points and mask agree on presence
    frames: int = 0

    def add(self, other: "AgreementCounts") -> "AgreementCounts":
        return AgreementCounts(self.inside + other.inside, self.claimed + other.claimed, self.agree + other.agree,
                               self.frames + other.frames)

    def signal(self) -> float:
        """inside share x presence share; NaN without a frame, the presence share alone without a claimed point."""
        if not self.frames:
            return float("nan")
        presence = self.agree / self.frames
        return presence * (self.inside / self.claimed) if self.claimed else presence


def agreement_counts(masks: np.ndarray, present: np.ndarray, tracks: np.ndarray, vis: np.ndarray) -> AgreementCounts:
    """One object over a window of f frames: masks (f, h, w) bool, present (f,) bool, tracks (K, f, 2) in pixels of
    the masks' frame, vis (K, f)."""
    f, h, w = masks.shape
    radius = max(1, int(round(TOL_PX * max(w, h) / 256.0)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    counts = AgreementCounts(frames=f)
    for t in range(f):
        seen = np.asarray(vis[:, t], bool)
        counts.agree += int(bool(seen.any()) == bool(present[t]))
        if not present[t] or not seen.any():
            continue
        grown = cv2.dilate(masks[t].astype(np.uint8), kernel).astype(bool)
        x = np.clip(np.floor(tracks[seen, t, 0]).astype(int), 0, w - 1)
        y = np.clip(np.floor(tracks[seen, t, 1]).astype(int), 0, h - 1)
        outside = (tracks[seen, t, 0] < 0) | (tracks[seen, t, 0] >= w) | (tracks[seen, t, 1] < 0) | \
            (tracks[seen, t, 1] >= h)
        counts.inside += int((grown[y, x] & ~outside).sum())
        counts.claimed += int(seen.sum())
    return counts
