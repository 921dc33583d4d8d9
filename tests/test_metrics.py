"""Metrics on small cases worked out by hand, and TAP-Vid against a literal per-element reading of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.metrics import box_iou, grounding_recall, mask_iou, tapvid_metrics

# ---------------------------------------------------------------------------------------------------------------
# TAP-Vid


def _two_points_three_frames():
    """2 points x 3 frames at 256 x 256 (no rescaling); truth sits at (100, 100) throughout.

    point 0: query frame 0, truth visible [T, T, F]; prediction (100,100) (103,100) (100,100), visible [T, T, T]
    point 1: query frame 2, truth visible [T, T, T]; prediction (100,100.5) (110,100) (100,100), visible [T, F, T]
    Scored (all but the query frame): p0f1 (d 3, gt vis, pred vis), p0f2 (d 0, gt occ, pred vis),
                                      p1f0 (d 0.5, gt vis, pred vis), p1f1 (d 10, gt vis, pred occ).
    Ground-truth-visible scored points: p0f1, p1f0, p1f1 -> 3.
      delta_1 = delta_2 = 1/3 (p1f0), delta_4 = delta_8 = 2/3 (+ p0f1), delta_16 = 3/3 (+ p1f1, occlusion ignored)
      delta_avg = (1 + 1 + 2 + 2 + 3) / 15 = 0.6
    OA: p0f1 right, p0f2 wrong, p1f0 right, p1f1 wrong -> 2/4 = 0.5
    Jaccard = TP / (gt-visible + FP):
      x = 1, 2: TP = {p1f0}; FP = {p0f2 (occluded in truth), p0f1 (too far)} -> 1 / (3 + 2) = 0.2
      x = 4, 8, 16: TP = {p0f1, p1f0} (p1f1 predicted occluded); FP = {p0f2} -> 2 / (3 + 1) = 0.5
      AJ = (0.2 + 0.2 + 0.5 + 0.5 + 0.5) / 5 = 0.38
    """
    gt = np.full((2, 3, 2), 100.0)
    gt_vis = np.array([[True, True, False], [True, True, True]])
    pred = np.array([[[100, 100], [103, 100], [100, 100]], [[100, 100.5], [110, 100], [100, 100]]], dtype=float)
    pred_vis = np.array([[True, True, True], [True, False, True]])
    return pred, pred_vis, gt, gt_vis, np.array([0, 2])


def test_tapvid_hand_worked_case():
    m = tapvid_metrics(*_two_points_three_frames(), size=(256, 256))
    expected = dict(delta_1=1 / 3, delta_2=1 / 3, delta_4=2 / 3, delta_8=2 / 3, delta_16=1.0, delta_avg=0.6,
                    jaccard_1=0.2, jaccard_2=0.2, jaccard_4=0.5, jaccard_8=0.5, jaccard_16=0.5, aj=0.38, oa=0.5)
    assert set(m) == set(expected)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k


def test_tapvid_first_mode_scores_only_frames_after_the_query():
    # "first": point 0 keeps frames 1, 2; point 1 (query at the last frame) has none.
    # Left: p0f1 (gt vis, d 3, pred vis), p0f2 (gt occ, pred vis).
    # delta: 0, 0, 1, 1, 1 -> 0.6; OA 1/2; Jaccard x=1,2: 0 / (1 + 2) = 0; x >= 4: 1 / (1 + 1) = 0.5 -> AJ 0.3
    m = tapvid_metrics(*_two_points_three_frames(), size=(256, 256), query_mode="first")
    assert m["delta_avg"] == pytest.approx(0.6)
    assert m["oa"] == pytest.approx(0.5)
    assert m["aj"] == pytest.approx(0.3)


def test_tapvid_scales_to_256_and_thresholds_are_strict():
    # A 128 x 64 frame: x doubles and y quadruples at 256 x 256.
    gt = np.zeros((3, 2, 2))
    pred = gt.copy()
    pred[0, 1] = [0.5, 0.0]  # 1.0 px at 256: not strictly within 1, within 2
    pred[1, 1] = [0.0, 0.3]  # 1.2 px at 256: same
    pred[2, 1] = [0.49, 0.0]  # 0.98 px at 256: within 1
    vis = np.ones((3, 2), dtype=bool)
    m = tapvid_metrics(pred, vis, gt, vis, np.zeros(3, dtype=int), size=(128, 64))
    assert m["delta_1"] == pytest.approx(1 / 3)
    assert m["delta_2"] == pytest.approx(1.0)
    assert m["oa"] == 1.0
    # The query frame is never scored: a wild prediction there changes nothing.
    pred[:, 0] = 1000.0
    assert tapvid_metrics(pred, vis, gt, vis, np.zeros(3, dtype=int), size=(128, 64)) == m


def _reference(pred, pred_vis, gt, gt_vis, query_frames, size):
    """The definition read literally, element by element (independent of the vectorised code)."""
    sx, sy = 256 / size[0], 256 / size[1]
    deltas, jaccards, agree, scored = [], [], 0, 0
    for x in (1, 2, 4, 8, 16):
        within = vis_total = tp = fn = fp = 0
        for p in range(len(gt)):
            for t in range(gt.shape[1]):
                if t == query_frames[p]:
                    continue
                d = np.hypot((pred[p, t, 0] - gt[p, t, 0]) * sx, (pred[p, t, 1] - gt[p, t, 1]) * sy)
                close = d < x
                if gt_vis[p, t]:
                    vis_total += 1
                    within += close
                    if pred_vis[p, t] and close:
                        tp += 1
                    else:
                        fn += 1
                if pred_vis[p, t] and (not gt_vis[p, t] or not close):
                    fp += 1
                if x == 1:
                    agree += pred_vis[p, t] == gt_vis[p, t]
                    scored += 1
        deltas.append(within / vis_total)
        jaccards.append(tp / (tp + fn + fp))
    return np.mean(deltas), np.mean(jaccards), agree / scored


def test_tapvid_matches_the_definition_on_random_tracks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, t = 7, 9
        gt = rng.uniform(0, 300, (p, t, 2))
        pred = gt + rng.normal(0, 4, (p, t, 2))
        gt_vis, pred_vis = rng.random((p, t)) < 0.7, rng.random((p, t)) < 0.7
        q = rng.integers(0, t, p)
        m = tapvid_metrics(pred, pred_vis, gt, gt_vis, q, size=(320, 240))
        delta, aj, oa = _reference(pred, pred_vis, gt, gt_vis, q, (320, 240))
        assert m["delta_avg"] == pytest.approx(delta)
        assert m["aj"] == pytest.approx(aj)
        assert m["oa"] == pytest.approx(oa)


def test_tapvid_rejects_mismatched_shapes_and_empty_is_nan():
    pred, pred_vis, gt, gt_vis, q = _two_points_three_frames()
    with pytest.raises(ValueError, match="shapes"):
        tapvid_metrics(pred[:, :2], pred_vis, gt, gt_vis, q, size=(256, 256))
    with pytest.raises(ValueError, match="query_frames"):
        tapvid_metrics(pred, pred_vis, gt, gt_vis, np.array([0, 3]), size=(256, 256))
    # Nothing visible in truth: delta has no denominator; OA still counts the one scored point predicted occluded.
    m = tapvid_metrics(pred, pred_vis, gt, np.zeros_like(gt_vis), q, size=(256, 256))
    assert np.isnan(m["delta_avg"]) and m["oa"] == pytest.approx(1 / 4) and m["aj"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Boxes, masks, grounding recall


def test_box_iou_hand_cases():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], dtype=float)
    b = np.array([[1, 1, 3, 3], [1, 1, 3, 3], [10, 10, 12, 12], [2, 0, 4, 2]], dtype=float)
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    # Overlap 1 x 1 over 4 + 4 - 1 = 7; containment 4 / 16; disjoint 0; sharing only an edge 0.
    np.testing.assert_allclose(iou[0], [1 / 7, 1 / 7, 0.0, 0.0])
    np.testing.assert_allclose(iou[1], [0.25, 0.25, 0.0, 0.25])
    assert box_iou([0, 0, 5, 5], [0, 0, 5, 5])[0, 0] == 1.0


def test_box_iou_zero_area_and_inverted_boxes_are_zero():
    big = [0, 0, 4, 4]
    assert box_iou([1, 1, 1, 3], big)[0, 0] == 0.0  # a line inside the box
    assert box_iou([1, 1, 1, 1], [1, 1, 1, 1])[0, 0] == 0.0  # two identical points: no union, IoU 0
    assert box_iou([3, 3, 1, 1], big)[0, 0] == 0.0  # x1 < x0: no area
    assert box_iou(np.zeros((0, 4)), [big]).shape == (0, 1)


def test_mask_iou_hand_cases():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b = np.zeros((4, 4), bool)
    b[0, :] = True  # 4 pixels, 2 shared
    assert mask_iou(a, b) == pytest.approx(2 / 6)
    assert mask_iou(a, a) == 1.0
    empty = np.zeros((4, 4), bool)
    assert mask_iou(a, empty) == 0.0 and mask_iou(empty, empty) == 0.0
    c = ~a  # disjoint from a, contains none of it
    pair = mask_iou(np.stack([a, b]), np.stack([a, b, c]))
    np.testing.assert_allclose(pair, [[1, 1 / 3, 0], [1 / 3, 1, 2 / 14]])
    with pytest.raises(ValueError, match="share"):
        mask_iou(a, np.zeros((3, 4), bool))


def test_grounding_recall_same_frame_rule():
    nan = [np.nan] * 4
    gt = np.array([
        [[0, 0, 10, 10]] * 4,  # object 0: visible on all 4 frames
        [nan] + [[20, 20, 30, 30]] * 3,  # object 1: enters at frame 1
        [[50, 50, 60, 60]] * 4,  # object 2
    ], dtype=float)
    pred = np.full((3, 4, 4), np.nan)
    pred[0, 2] = [0, 0, 10, 9]  # IoU 0.9 with object 0 on frame 2
    pred[1, 0] = [20, 20, 30, 30]  # where object 1 will be, but on frame 0, before it enters: no
    pred[2, 3] = [50, 50, 60, 55]  # IoU exactly 0.5 with object 2: counts (>=)
    assert grounding_recall(pred, gt) == pytest.approx(2 / 3)
    assert grounding_recall(pred, gt, iou=0.6) == pytest.approx(1 / 3)
    pred[1, 1] = [21, 21, 31, 31]  # on a frame where object 1 is visible: 81 / 119 = 0.68
    assert grounding_recall(pred, gt) == pytest.approx(1.0)
    assert np.isnan(grounding_recall(pred, np.zeros((0, 4, 4))))
    with pytest.raises(ValueError):
        grounding_recall(pred[:, :2], gt)
