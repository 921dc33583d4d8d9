"""Points: deep inside the mask, spread over it, reproducible from the seed; thin and tiny masks defined."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from annotate.config import AnnotateConfig
from annotate.item import ClipItem, Grounding, Phrase
from annotate.points import PointsStage, mask_depth, sample_points


def disc_mask(h=80, w=100, cx=50.0, cy=40.0, r=25.0):
    yy, xx = np.mgrid[:h, :w] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def min_pairwise(p: np.ndarray) -> float:
    return min(np.linalg.norm(a - b) for a, b in itertools.combinations(p, 2))


def in_mask(mask: np.ndarray, pts: np.ndarray) -> bool:
    return bool(mask[np.floor(pts[:, 1]).astype(int), np.floor(pts[:, 0]).astype(int)].all())


def test_depth_of_a_small_square_by_hand():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True  # 5x5 square
    d = mask_depth(mask)
    assert d[3, 3] == pytest.approx(2.5)  # 3 px to the nearest outside centre, minus the half pixel
    assert d[1, 3] == pytest.approx(0.5) and d[2, 2] == pytest.approx(1.5)
    assert d[0, 0] == 0.0
    full = np.ones((5, 5), bool)  # the frame's edge is a border too
    assert mask_depth(full)[0, 2] == pytest.approx(0.5) and mask_depth(full)[2, 2] == pytest.approx(2.5)


def test_farthest_on_a_square_worked_example():
    mask = np.zeros((20, 20), bool)
    mask[5:14, 5:14] = True  # 9x9: pixels 2 deep form the inner 5x5 square, pixels 7..11
    pts = sample_points(mask, 3, np.random.default_rng(0), margin_px=2.0, depth_frac=0.0)
    assert pts[0].tolist() == [9.5, 9.5]  # the deepest pixel's centre first
    corners = {(7.5, 7.5), (7.5, 11.5), (11.5, 7.5), (11.5, 11.5)}
    assert {tuple(p) for p in pts[1:].tolist()} <= corners and len({tuple(p) for p in pts[1:]}) == 2


@pytest.mark.parametrize("method", ["farthest", "kmeans"])
def test_points_deep_inside_and_spread(method):
    mask, r, margin = disc_mask(), 25.0, 3.0
    pts = sample_points(mask, 3, np.random.default_rng(1), method=method, margin_px=margin)
    assert pts.shape == (3, 2) and in_mask(mask, pts)
    border_dist = r - np.linalg.norm(pts - [50.0, 40.0], axis=1)
    assert border_dist.min() >= margin  # at least margin_px from the border
    # Spread: the naive choice (the 3 deepest pixels) huddles at the centre; ours are far apart.
    d = mask_depth(mask)
    naive = np.argwhere(d >= np.sort(d.ravel())[-3])[:3][:, ::-1] + 0.5
    assert min_pairwise(naive) < 2.0
    assert min_pairwise(pts) > 12.0


def test_same_seed_same_points_and_the_seed_matters():
    mask = disc_mask()
    for method in ("farthest", "kmeans"):
        a = sample_points(mask, 3, np.random.default_rng(7), method=method)
        b = sample_points(mask, 3, np.random.default_rng(7), method=method)
        assert np.array_equal(a, b)
        others = [sample_points(mask, 3, np.random.default_rng(s), method=method) for s in range(5)]
        assert any(not np.array_equal(a, o) for o in others)  # a disc is full of ties: the rng breaks them


def test_thin_mask_relaxes_the_margin_and_still_spreads():
    mask = np.zeros((30, 60), bool)
    mask[10:12, 5:55] = True  # 2 px thick: no pixel is 3 px deep
    pts = sample_points(mask, 3, np.random.default_rng(0), margin_px=3.0)
    assert in_mask(mask, pts)
    assert min_pairwise(pts) >= 15.0  # along the line (length 50), not piled up
    strip = np.zeros((30, 60), bool)
    strip[10:16, 5:55] = True  # 6 px thick: the inner half is rows 11..14
    pts = sample_points(strip, 3, np.random.default_rng(0), margin_px=3.0)
    assert set(np.floor(pts[:, 1]).astype(int)) <= {11, 12, 13, 14}


def test_mask_smaller_than_k_repeats_its_pixels():
    mask = np.zeros((10, 10), bool)
    mask[4, 4] = mask[4, 6] = True
    pts = sample_points(mask, 3, np.random.default_rng(0))
    assert pts.shape == (3, 2) and in_mask(mask, pts)
    assert {tuple(p) for p in pts.tolist()} == {(4.5, 4.5), (6.5, 4.5)}
    with pytest.raises(ValueError, match="empty mask"):
        sample_points(np.zeros((4, 4), bool), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown points method"):
        sample_points(mask, 3, np.random.default_rng(0), method="grid")


def test_points_avoid_thin_extremities():
    mask = disc_mask(h=80, w=140, cx=40.0, cy=40.0, r=30.0)
    mask[38:46, 70:135] = True  # an 8 px tail: 3.5 px deep, above margin_px but a poor place to track
    pts = sample_points(mask, 3, np.random.default_rng(0), margin_px=3.0)
    assert (pts[:, 0] < 70).all()
    tail = sample_points(mask, 3, np.random.default_rng(0), margin_px=3.0, depth_frac=0.0)
    assert (tail[:, 0] > 100).any()  # without the relative depth, farthest-point sampling runs down the tail


def make_item(masks: list[np.ndarray], seed: int = 3) -> ClipItem:
    item = ClipItem(row=0, video_id="v", video="x.mp4", caption="", seed=seed)
    for i, m in enumerate(masks):
        item.phrases.append(Phrase(text=f"object {i}", start=i, end=i + 1))
        item.groundings.append(Grounding(phrase_index=i, track_frame=0, source_frame=0, box=np.zeros(4)))
    item.masks = list(masks)
    return item


def test_stage_fills_points_and_drops_specks():
    speck = np.zeros((80, 100), bool)
    speck[5, 5] = speck[5, 6] = True
    item = make_item([disc_mask(), speck, disc_mask(cx=30, cy=30, r=12)])
    PointsStage(AnnotateConfig()).process([item])
    assert item.ok
    assert item.points.shape == (2, 3, 2)
    reason = "mask smaller than K=3 pixels (2 px)"
    assert item.dropped == [{"phrase": "object 1", "char_span": [1, 2], "reason": reason}]
    assert in_mask(item.masks[0], item.points[0]) and in_mask(item.masks[1], item.points[1])
    again = make_item([disc_mask(), speck, disc_mask(cx=30, cy=30, r=12)])
    PointsStage(AnnotateConfig()).process([again])
    assert np.array_equal(item.points, again.points)  # item.seed decides
    assert item.versions["points"].startswith("points farthest")


def test_stage_with_no_objects_and_mismatched_masks():
    empty = make_item([])
    PointsStage(AnnotateConfig()).process([empty])
    assert empty.ok and empty.points.shape == (0, 3, 2)
    bad = make_item([disc_mask()])
    bad.masks = []
    PointsStage(AnnotateConfig()).process([bad])
    assert bad.error == ("points", "0 masks for 1 objects")


def test_points_come_from_the_largest_component_not_a_stray_fragment():
    """A 30x30 object and a 12x12 fragment far from it (a shadow, a bit of background): every point lands on the
    object, though farthest-point sampling would love the fragment's distance."""
    mask = np.zeros((80, 120), bool)
    mask[10:40, 10:40] = True
    mask[60:72, 100:112] = True
    for seed in range(5):
        for method in ("farthest", "kmeans"):
            pts = sample_points(mask, 3, np.random.default_rng(seed), method=method)
            assert np.all(pts[:, 0] < 40) and np.all(pts[:, 1] < 40), (seed, method, pts)
