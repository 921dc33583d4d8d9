"""Affine geometry shared by rendering, masks and track_points (one formula, so masks and point visibility agree
exactly), and the renderer that composites the objects over the panned background."""

from __future__ import annotations

import cv2
import numpy as np

from annotate.synthetic.params import WorldParams


def invert_affine(A: np.ndarray) -> np.ndarray:
    """Inverse of 2x3 affine(s) (..., 2, 3)."""
    a, b, c = A[..., 0, 0], A[..., 0, 1], A[..., 0, 2]
    d, e, f = A[..., 1, 0], A[..., 1, 1], A[..., 1, 2]
    det = a * e - b * d
    inv = np.empty_like(A)
    inv[..., 0, 0], inv[..., 0, 1], inv[..., 0, 2] = e / det, -b / det, (b * f - c * e) / det
    inv[..., 1, 0], inv[..., 1, 1], inv[..., 1, 2] = -d / det, a / det, (c * d - a * f) / det
    return inv


def apply_affine(A: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return A[0, 0] * x + A[0, 1] * y + A[0, 2], A[1, 0] * x + A[1, 1] * y + A[1, 2]


def bilinear(padded: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an image zero-padded by 1 px at continuous coords of the unpadded image (zero outside it)."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    fx = np.clip(x + 0.5, 0.0, w + 1 - 1e-9)  # x - 0.5 (centres at integers) + 1 (the pad)
    fy = np.clip(y + 0.5, 0.0, h + 1 - 1e-9)
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    if padded.ndim == 3:
        wx, wy = wx[..., None], wy[..., None]
    top = padded[y0, x0] * (1 - wx) + padded[y0, x0 + 1] * wx
    bot = padded[y0 + 1, x0] * (1 - wx) + padded[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bot * wy


def covers_shape(alpha_padded: np.ndarray, A_inv: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether image points (x, y) fall on the object's shape (alpha >= 0.5), ignoring frame and occlusion."""
    u, v = apply_affine(A_inv, x, y)
    return bilinear(alpha_padded, u, v) >= 0.5


def _cv_matrix(A: np.ndarray, x0: int = 0, y0: int = 0) -> np.ndarray:
    """A local->image affine in continuous coords as OpenCV's pixel-index matrix, for an ROI starting at (x0, y0)."""
    M = A.copy()
    M[:, 2] = A[:, :2] @ np.array([0.5, 0.5]) + A[:, 2] - 0.5 - np.array([x0, y0])
    return M


def _roi(A: np.ndarray, sprite: int, W: int, H: int) -> tuple[int, int, int, int] | None:
    corners = np.array([[0, 0], [sprite, 0], [0, sprite], [sprite, sprite]], np.float64)
    xy = corners @ A[:, :2].T + A[:, 2]
    x0, y0 = max(0, int(np.floor(xy[:, 0].min())) - 1), max(0, int(np.floor(xy[:, 1].min())) - 1)
    x1, y1 = min(W, int(np.ceil(xy[:, 0].max())) + 1), min(H, int(np.ceil(xy[:, 1].max())) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def render_frames(p: WorldParams, bg: np.ndarray, camera: np.ndarray, affine: np.ndarray, alpha: list[np.ndarray],
            rgb: list[np.ndarray], z: np.ndarray):
    """Frames (T, H, W, 3) uint8 and ground-truth masks; objects composited back to front with soft edges."""
    T, W, H, N = p.frames, p.width, p.height, len(alpha)
    frames = np.empty((T, H, W, 3), np.uint8)
    masks = np.zeros((N, T, H, W), bool)
    in_frame = np.zeros((N, T), np.int64)  # pixels on the shape inside the frame, occlusion ignored
    occluded_by = np.zeros((N, N, T), np.int64)  # [k, j, t]: pixels of k hidden by the nearer j
    premult = [np.dstack([c * a[..., None], a]).astype(np.float32) for c, a in zip(rgb, alpha)]
    padded = [np.pad(a.astype(np.float64), 1) for a in alpha]
    back_to_front = np.argsort(z, kind="stable")
    for t in range(T):
        ox, oy = camera[t]
        frame = cv2.warpAffine(bg, np.array([[1, 0, -ox], [0, 1, -oy]], np.float64), (W, H), flags=cv2.INTER_LINEAR)
        covered = np.zeros((H, W), bool)
        for k in back_to_front[::-1]:  # front to back: the visible mask is what nearer objects left uncovered
            A = affine[k, t]
            roi = _roi(A, alpha[k].shape[0], W, H)
            if roi is None:
                continue
            x0, y0, x1, y1 = roi
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
            inside = covers_shape(padded[k], invert_affine(A), xs, ys)
            in_frame[k, t] = inside.sum()
            under = covered[y0:y1, x0:x1]
            for j in np.flatnonzero(z > z[k]):  # nearer objects were already drawn into `covered` masks
                occluded_by[k, j, t] = (inside & masks[j, t, y0:y1, x0:x1]).sum()  # visible part of j only
            masks[k, t, y0:y1, x0:x1] = inside & ~under
            covered[y0:y1, x0:x1] |= inside
        for k in back_to_front:
            roi = _roi(affine[k, t], alpha[k].shape[0], W, H)
            if roi is None:
                continue
            x0, y0, x1, y1 = roi
            warped = cv2.warpAffine(premult[k], _cv_matrix(affine[k, t], x0, y0), (x1 - x0, y1 - y0),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            a = warped[..., 3:]
            frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - a) + warped[..., :3]
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames, masks, in_frame, occluded_by


def visible_boxes(masks: np.ndarray) -> np.ndarray:
    N, T = masks.shape[:2]
    boxes = np.full((N, T, 4), np.nan, np.float32)
    for k in range(N):
        cols, rows = masks[k].any(1), masks[k].any(2)  # (T, W), (T, H)
        for t in np.flatnonzero(cols.any(1)):
            xs, ys = np.flatnonzero(cols[t]), np.flatnonzero(rows[t])
            boxes[k, t] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)  # pixel i covers [i, i+1)
    return boxes
