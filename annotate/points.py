"""Points stage: K points per object, well inside its mask and spread over it, to be tracked.

Points come from the mask's largest connected component (when it has K pixels): a stray fragment (a shadow, a
piece of the background that the segmenter took along) is no place for a point to start.
Depth of a pixel = Euclidean distance from its centre to the nearest pixel centre outside the mask, minus the half
pixel to that pixel's edge; the frame's edge counts as outside (a point at the edge leaves the frame at once).
Candidates are the pixels at least max(`margin_px`, `depth_frac` x the deepest) deep: the relative part keeps
points off thin extremities (a cat's ear tip, a paw) where a tracker slides onto the background. A mask too thin
to have K of them falls back to its inner half (depth >= half the deepest), then to all its pixels.
Among the candidates:
- `farthest`: farthest-point sampling, starting from the deepest pixel;
- `kmeans`: k-means (k-means++ seeding) of the candidate pixels, each centroid snapped to a distinct candidate.
Points sit at pixel centres (i + 0.5, j + 0.5), as docs/design.md's "Frames, time and coordinates" say. Ties are broken by the item's rng,
so the same seed gives the same points.

A mask with fewer than K pixels has no K distinct points: `sample_points` repeats its pixels, and the stage
drops such an object ("mask smaller than K pixels") rather than track the same pixel twice.
"""

from __future__ import annotations

import cv2
import numpy as np

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.stage import Resources, Stage

METHODS = ("farthest", "kmeans")
KMEANS_ITERS = 20
DEPTH_FRAC = 0.25  # candidates are at least this share of the mask's deepest depth inside (and margin_px)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (ties: the first by OpenCV's label order)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:  # background plus at most one component
        return mask
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def mask_depth(mask: np.ndarray) -> np.ndarray:
    """Float (h, w): distance from each mask pixel's centre to the mask border (0 outside the mask)."""
    padded = np.pad(mask.astype(np.uint8), 1)  # the frame edge is border too
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.where(mask, dist - 0.5, 0.0).astype(np.float64)


def candidate_pixels(
    mask: np.ndarray, k: int, margin_px: float, depth_frac: float = DEPTH_FRAC
) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) integer (x, y) pixels to choose from, and their depths: the deep ones, relaxed for thin masks."""
    depth = mask_depth(mask)
    ys, xs = np.nonzero(mask)
    d = depth[ys, xs]
    for threshold in (max(margin_px, depth_frac * d.max()), min(margin_px, 0.5 * d.max())):
        keep = d >= threshold
        if keep.sum() >= k:
            return np.stack([xs[keep], ys[keep]], axis=1), d[keep]
    return np.stack([xs, ys], axis=1), d


def farthest_points(xy: np.ndarray, depth: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k of the points: the deepest first, then each the farthest from those already chosen."""
    order = rng.permutation(len(xy))  # argmax takes the first of equals: a shuffled order breaks ties by the rng
    xy, depth = xy[order].astype(np.float64), depth[order]
    chosen = [int(np.argmax(depth))]
    nearest = np.linalg.norm(xy - xy[chosen[0]], axis=1)
    for _ in range(1, k):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(xy - xy[nxt], axis=1))
    return order[chosen]


def kmeans_points(xy: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of k distinct points nearest to k-means centroids (k-means++ seeding).

    Written out rather than cv2.kmeans, which draws from OpenCV's global RNG: here the item's seed decides.
    """
    pts = xy.astype(np.float64)
    centres = [pts[rng.integers(len(pts))]]
    for _ in range(1, k):  # k-means++: the next seed with probability proportional to squared distance
        d2 = np.min([np.sum((pts - c) ** 2, axis=1) for c in centres], axis=0)
        total = d2.sum()
        centres.append(pts[rng.choice(len(pts), p=d2 / total)] if total > 0 else pts[rng.integers(len(pts))])
    centres = np.array(centres)
    for _ in range(KMEANS_ITERS):
        label = np.argmin(((pts[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        moved = np.array([pts[label == j].mean(0) if np.any(label == j) else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    # A centroid of a curved mask can fall outside it: snap each to its nearest candidate not yet taken.
    taken: list[int] = []
    for c in centres:
        d2 = np.sum((pts - c) ** 2, axis=1)
        d2[taken] = np.inf
        taken.append(int(np.argmin(d2)))
    return np.array(taken)


def sample_points(
    mask: np.ndarray,
    k: int,
    rng: np.random.Generator,
    method: str = "farthest",
    margin_px: float = 3.0,
    depth_frac: float = DEPTH_FRAC,
) -> np.ndarray:
    """(k, 2) float (x, y) pixel coordinates of k points inside bool `mask`, deep and spread (module docstring).

    A mask with fewer than k pixels gives all its pixels, repeated in turn; an empty mask is a ValueError.
    """
    if method not in METHODS:
        raise ValueError(f"unknown points method {method!r} (expected {' | '.join(METHODS)})")
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("empty mask: no point to sample")
    main = largest_component(mask)
    mask = main if main.sum() >= k else mask  # a few scattered pixels: no component holds k points
    xy, depth = candidate_pixels(mask, k, margin_px, depth_frac)
    if len(xy) < k:  # only when the whole mask has fewer than k pixels
        idx = np.resize(farthest_points(xy, depth, len(xy), rng), k)
    elif method == "farthest":
        idx = farthest_points(xy, depth, k, rng)
    else:
        idx = kmeans_points(xy, k, rng)
    return xy[idx].astype(np.float64) + 0.5


class PointsStage(Stage):
    name = "points"

    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, num_gpus=0.0, memory_gb=0.05)

    def version(self) -> str:
        return f"points {self.cfg.points.method} (margin {self.cfg.points.margin_px:g} px)"

    def setup(self) -> None:
        if self.cfg.points.method not in METHODS:
            raise ConfigError(f"points.method: unknown {self.cfg.points.method!r} (expected {' | '.join(METHODS)})")
        if self.cfg.num_points < 1:
            raise ConfigError(f"num_points: must be >= 1, got {self.cfg.num_points}")

    def process_item(self, item: ClipItem) -> None:
        k = self.cfg.num_points
        if len(item.masks) != len(item.groundings):
            raise StageError(self.name, f"{len(item.masks)} masks for {len(item.groundings)} objects")
        for i in reversed(range(len(item.masks))):
            n = int(item.masks[i].sum())
            if n == 0:
                item.drop_object(i, "empty mask")
            elif n < k:
                item.drop_object(i, f"mask smaller than K={k} pixels ({n} px)")
        rng = np.random.default_rng(int(item.seed) % (1 << 64))  # default_rng takes no negative seed
        pts = [
            sample_points(m, k, rng, method=self.cfg.points.method, margin_px=self.cfg.points.margin_px)
            for m in item.masks
        ]
        item.points = np.stack(pts) if pts else np.zeros((0, k, 2), np.float64)
        rep = item.representative_rows()
        item.points = item.points[rep] if len(rep) else item.points  # one object named twice: the same points
