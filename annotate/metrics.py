"""Quality metrics of the annotations against ground truth: TAP-Vid point tracking, box / mask IoU, grounding recall.

Pure numpy. The TAP-Vid numbers follow `compute_tapvid_metrics` of tapnet / CoTracker's evaluation
(cotracker/evaluation/core/eval_utils.py) line for line, so figures compare with published ones.
"""

from __future__ import annotations

import numpy as np

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels at 256 x 256
TAPVID_SIZE = 256


def tapvid_metrics(pred_tracks: np.ndarray, pred_vis: np.ndarray, gt_tracks: np.ndarray, gt_vis: np.ndarray,
                   query_frames: np.ndarray, size: tuple[float, float], query_mode: str = "strided") -> dict:
    """TAP-Vid <delta^x_avg>, Average Jaccard and Occlusion Accuracy over P points and T frames.

    pred_tracks, gt_tracks (P, T, 2) pixel (x, y) in an image of `size` = (W, H); pred_vis, gt_vis (P, T) bool;
    query_frames (P,) the frame each point was queried at. Coordinates are scaled to 256 x 256 first.
    Scored frames: all but the query frame ("strided", the default) or only those after it ("first").
    - delta_x: share of ground-truth-visible scored points predicted closer than x px (strictly), whatever the
      predicted visibility; delta_avg: their mean over x in 1, 2, 4, 8, 16.
    - jaccard_x = TP / (TP + FN + FP): TP visible in both and closer than x; FN visible in truth but predicted
      occluded or not closer than x; FP predicted visible but occluded in truth or not closer than x. aj: their mean.
    - oa: share of scored points whose predicted visibility equals the truth.
    All points are pooled (one "video"); for a benchmark figure, average the per-clip dicts as tapnet does.
    A ratio with an empty denominator is NaN.
    """
    pred_tracks, gt_tracks = np.asarray(pred_tracks, np.float64), np.asarray(gt_tracks, np.float64)
    pred_vis, gt_vis = np.asarray(pred_vis, bool), np.asarray(gt_vis, bool)
    query_frames = np.round(np.asarray(query_frames)).astype(np.int64)
    p, t = gt_vis.shape if gt_vis.ndim == 2 else (None, None)
    if p is None or gt_tracks.shape != (p, t, 2) or pred_tracks.shape != (p, t, 2) or pred_vis.shape != (p, t):
        raise ValueError(f"tapvid_metrics: shapes pred {pred_tracks.shape}/{pred_vis.shape}, gt {gt_tracks.shape}/"
                         f"{gt_vis.shape} must be (P, T, 2) / (P, T) alike")
    if query_frames.shape != (p,) or np.any((query_frames < 0) | (query_frames >= t)):
        raise ValueError(f"tapvid_metrics: query_frames must be (P,) = ({p},) indices in [0, {t})")
    scale = np.array([TAPVID_SIZE / size[0], TAPVID_SIZE / size[1]])
    pred_tracks, gt_tracks = pred_tracks * scale, gt_tracks * scale

    frames = np.arange(t)[None, :]
    if query_mode == "strided":
        scored = frames != query_frames[:, None]
    elif query_mode == "first":
        scored = frames > query_frames[:, None]
    else:
        raise ValueError(f"tapvid_metrics: query_mode {query_mode!r} (expected strided or first)")

    out = {"oa": _ratio(np.sum((pred_vis == gt_vis) & scored), np.sum(scored))}
    sq_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)
    n_gt_visible = np.sum(gt_vis & scored)
    deltas, jaccards = [], []
    for x in TAPVID_THRESHOLDS:
        within = sq_dist < x * x
        correct = within & gt_vis & scored
        delta = _ratio(np.sum(correct), n_gt_visible)
        tp = np.sum(correct & pred_vis)
        fp = np.sum(pred_vis & (~gt_vis | ~within) & scored)
        jaccard = _ratio(tp, n_gt_visible + fp)  # TP + FN = the ground-truth-visible points
        out[f"delta_{x}"], out[f"jaccard_{x}"] = delta, jaccard
        deltas.append(delta)
        jaccards.append(jaccard)
    out["delta_avg"] = float(np.mean(deltas))
    out["aj"] = float(np.mean(jaccards))
    return out


def _ratio(num, den) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: a (N, 4), b (M, 4) -> (N, M). A single box (4,) counts as (1, 4).

    A box with x1 <= x0 or y1 <= y0 has zero area; a pair whose union is empty has IoU 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = _area(a)
    area_b = _area(b)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    inter = np.where((area_a[:, None] > 0) & (area_b[None, :] > 0), inter, 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """IoU of boolean masks: two (h, w) masks -> float; stacks (N, h, w), (M, h, w) -> (N, M).

    Two empty masks have IoU 0 (there is nothing to agree on).
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    single = a.ndim == 2 and b.ndim == 2
    a = a.reshape(-1, *a.shape[-2:]) if a.ndim >= 2 else a
    b = b.reshape(-1, *b.shape[-2:]) if b.ndim >= 2 else b
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou: masks {a.shape} and {b.shape} must share (h, w)")
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return float(iou[0, 0]) if single else iou


def grounding_recall(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou: float = 0.5) -> float:
    """Share of ground-truth objects found by some predicted box on the same frame with IoU >= `iou`.

    pred_boxes (P, F, 4) and gt_boxes (G, F, 4) xyxy per frame, NaN on the frames where a predicted object has no
    box (a grounder boxes each object on one frame) or a ground-truth object is not visible. A ground-truth object
    counts as recalled if any predicted object's box on any frame f overlaps its own box on that frame f by at least
    `iou`. No identity or one-to-one matching: this measures whether the objects were found, not which phrase
    they were attached to. With no ground-truth object the recall is NaN.
    """
    pred = np.asarray(pred_boxes, np.float64)
    gt = np.asarray(gt_boxes, np.float64)
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[-1] != 4 or gt.shape[-1] != 4 or pred.shape[1] != gt.shape[1]:
        raise ValueError(f"grounding_recall: pred {pred.shape} and gt {gt.shape} must be (P, F, 4) and (G, F, 4)")
    if len(gt) == 0:
        return float("nan")
    found = np.zeros(len(gt), dtype=bool)
    for f in range(gt.shape[1]):
        p_ok = np.all(np.isfinite(pred[:, f]), axis=1)
        g_ok = np.all(np.isfinite(gt[:, f]), axis=1)
        if p_ok.any() and g_ok.any():
            hit = (box_iou(gt[g_ok, f], pred[p_ok, f]) >= iou).any(axis=1)
            found[np.flatnonzero(g_ok)[hit]] = True
    return float(found.mean())
