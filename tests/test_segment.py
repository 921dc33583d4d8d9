"""Segment stage: GrabCut on a drawn frame, a tiny random SAM built from its own classes, the drop rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.item import ClipItem
from annotate.segment import (
    GrabCutSegmenter,
    SamSegmenter,
    grabcut_mask,
    load_sam,
    make_segmenter,
    pixel_box,
    select_best_masks,
)
from tests.annotate_helpers import iou, segment_item, tiny_sam

H, W = 120, 200


def textured_scene(seed: int = 0):
    """A textured green background with a textured red disc and a textured blue rectangle; their true masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W] + 0.5
    frame = (rng.integers(0, 50, (H, W, 3)) + [40, 110, 50]).astype(np.uint8)
    disc = (xx - 60) ** 2 + (yy - 60) ** 2 <= 28**2
    rect = (xx >= 120) & (xx < 175) & (yy >= 30) & (yy < 95)
    frame[disc] = (rng.integers(0, 50, (disc.sum(), 3)) + [190, 40, 50]).astype(np.uint8)
    frame[rect] = (rng.integers(0, 50, (rect.sum(), 3)) + [40, 50, 190]).astype(np.uint8)
    return frame, disc, rect


def test_pixel_box_clips_and_names_bad_boxes():
    box, rect, why = pixel_box(np.array([-5.0, 10.2, 30.7, 500.0]), 100, 50)
    assert why == "" and np.allclose(box, [0, 10.2, 30.7, 50]) and rect == (0, 10, 31, 50)
    assert pixel_box(np.array([120.0, 0, 130, 10]), 100, 50)[2] == "box outside the frame"
    assert pixel_box(np.array([10.0, 10, 10, 20]), 100, 50)[2] == "degenerate box"
    assert pixel_box(np.array([10.0, np.nan, 20, 20]), 100, 50)[2] == "degenerate box"


def test_grabcut_recovers_disc_and_rectangle():
    frame, disc, rect = textured_scene()
    item = segment_item(frame[None], [(0, [28, 28, 93, 93]), (0, [114, 24, 181, 101])])
    make_segmenter(AnnotateConfig()).process([item])
    assert item.ok and item.dropped == []
    assert len(item.masks) == 2 and all(m.shape == (H, W) and m.dtype == bool for m in item.masks)
    assert iou(item.masks[0], disc) > 0.8
    assert iou(item.masks[1], rect) > 0.8
    assert not item.masks[0][:, 94:].any() and not item.masks[1][:, :113].any()  # never outside its box
    assert item.groundings[0].mask_area == pytest.approx(item.masks[0].sum() / (H * W))
    assert item.versions["segment"].startswith("grabcut")


def test_grabcut_box_filling_the_frame_uses_its_ring_as_background():
    frame, disc, _ = textured_scene()
    crop, truth = frame[20:100, 20:100], disc[20:100, 20:100]  # the disc fills most of this 80x80 frame
    mask = grabcut_mask(crop, (0, 0, 80, 80), iters=3)
    assert iou(mask, truth) > 0.8


def test_empty_grabcut_mask_and_bad_boxes_are_dropped_with_reasons():
    frame = np.full((H, W, 3), 128, np.uint8)  # flat grey: nothing to separate from the background
    frame2, disc, _ = textured_scene()
    frames = np.stack([frame, frame2])
    item = segment_item(frames, [(0, [50, 50, 90, 90]), (1, [28, 28, 93, 93]), (1, [300, 0, 320, 10]),
                              (1, [40, 40, 40, 60])])
    GrabCutSegmenter(AnnotateConfig()).process([item])
    assert item.ok
    assert [d["phrase"] for d in item.dropped] == ["object 3", "object 2", "object 0"]
    assert [d["reason"] for d in item.dropped] == ["degenerate box", "box outside the frame", "empty mask"]
    assert len(item.groundings) == len(item.masks) == 1 and item.groundings[0].phrase_index == 1
    assert iou(item.masks[0], disc) > 0.8


def test_item_without_clip_is_rejected_not_raised():
    item = ClipItem(row=3, video_id="v", video="x.mp4", caption="a cat")
    GrabCutSegmenter(AnnotateConfig()).process([item])
    assert item.error[0] == "segment" and "no decoded clip" in item.error[1]


# --- SAM ----------------------------------------------------------------------------------------------------


def sam_cfg() -> AnnotateConfig:
    cfg = AnnotateConfig()
    cfg.segment.backend = "sam"
    return cfg


def test_select_best_masks_takes_the_highest_predicted_iou():
    masks = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = masks[0, 1, 0, 1] = masks[0, 2, 1, 0] = True
    masks[1, 0, 1, 1] = masks[1, 1, 0, 0] = masks[1, 2, 0, 1] = True
    iou_pred = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.1, 0.3]])
    best = select_best_masks(masks, iou_pred)
    assert best.tolist() == [[[False, True], [False, False]], [[False, False], [False, True]]]


def test_sam_batches_the_boxes_of_each_frame(monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 80, 3), dtype=np.uint8)
    item = segment_item(frames, [(0, [2, 2, 30, 30]), (2, [5, 5, 60, 40]), (0, [40, 10, 70, 40]), (0, [0, 0, 80, 48]),
                              (2, [10, 20, 20, 30])])
    stage = SamSegmenter.from_model(sam_cfg(), tiny_sam())
    stage.ready()
    calls = {"encoder": [], "boxes": []}
    encoder_forward, predict_torch = stage.model.image_encoder.forward, stage.predictor.predict_torch

    def count_encoder(x):
        calls["encoder"].append(tuple(x.shape))
        return encoder_forward(x)

    def count_predict(*args, **kwargs):
        calls["boxes"].append(tuple(kwargs["boxes"].shape))
        return predict_torch(*args, **kwargs)

    monkeypatch.setattr(stage.model.image_encoder, "forward", count_encoder)
    monkeypatch.setattr(stage.predictor, "predict_torch", count_predict)
    stage.process([item])
    assert item.ok, item.error
    assert calls["encoder"] == [(2, 3, 64, 64)]  # frames 0 and 2, once each, in one stack
    assert sorted(calls["boxes"]) == [(2, 4), (3, 4)]  # one batched decoder call per frame
    assert len(item.masks) == 5 and all(m.shape == (48, 80) and m.dtype == bool for m in item.masks)
    assert item.versions["segment"].startswith("sam injected model")


def test_sam_stage_keeps_the_best_of_three_for_each_box(monkeypatch):
    frames = np.zeros((1, 6, 8, 3), np.uint8)
    item = segment_item(frames, [(0, [0, 0, 4, 4]), (0, [4, 2, 8, 6])])
    stage = SamSegmenter(sam_cfg(), model=tiny_sam())
    stage.ready()
    masks = torch.zeros(2, 3, 6, 8, dtype=torch.bool)
    for b in range(2):
        for c in range(3):
            masks[b, c, c, 4 * b : 4 * b + 2] = True  # candidate c of box b: row c, columns by box
    iou_pred = torch.tensor([[0.1, 0.2, 0.8], [0.6, 0.3, 0.5]])
    monkeypatch.setattr(stage.predictor, "predict_torch", lambda *a, **k: (masks, iou_pred, None))
    stage.process([item])
    assert item.ok
    assert np.argwhere(item.masks[0]).tolist() == [[2, 0], [2, 1]]  # box 0: candidate 2
    assert np.argwhere(item.masks[1]).tolist() == [[0, 4], [0, 5]]  # box 1: candidate 0


def test_sam_empty_mask_is_dropped():
    sam = tiny_sam()
    sam.mask_threshold = 1e9  # no logit reaches it: every mask comes back empty
    frames = np.random.default_rng(1).integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)
    item = segment_item(frames, [(0, [5, 5, 30, 30])])
    SamSegmenter(sam_cfg(), model=sam).process([item])
    assert item.ok and item.groundings == [] and item.masks == []
    assert item.dropped == [{"phrase": "object 0", "char_span": [0, 1], "reason": "empty mask"}]


def test_sam_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^segment\.weights: .*not found"):
        load_sam("vit_b", None)
    with pytest.raises(ConfigError, match=r"^segment\.weights: "):
        load_sam("vit_b", str(tmp_path / "sam_vit_b.pth"))
    with pytest.raises(ConfigError, match=r"^segment\.model_type: 'vit_x'"):
        load_sam("vit_x", None)
    cfg = sam_cfg()
    stage = make_segmenter(cfg)
    with pytest.raises(ConfigError, match=r"^segment\.weights"):
        stage.setup()
    cfg.segment.backend = "mask-rcnn"
    with pytest.raises(ConfigError, match=r"^segment\.backend: unknown backend 'mask-rcnn'"):
        make_segmenter(cfg)


def test_sam_checkpoint_of_another_model_is_a_config_error(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam().state_dict(), path)
    with pytest.raises(ConfigError, match=r"^segment\.weights: .* does not fit segment\.model_type=vit_b"):
        load_sam("vit_b", str(path))


def test_sam_resources_follow_the_device():
    cfg = sam_cfg()
    cfg.segment.device = "cpu"
    assert make_segmenter(cfg).resources().num_gpus == 0
    cfg.segment.device = "auto"  # asks for a GPU; runs on the CPU where there is none
    assert make_segmenter(cfg).resources().num_gpus == 1
    cfg.segment.device = "cuda:0"
    assert make_segmenter(cfg).resources().num_gpus == 1
    assert GrabCutSegmenter(cfg).resources().num_gpus == 0


def test_grabcut_that_cannot_fit_its_colour_models_drops_the_object():
    frames = np.full((1, 1, 1, 3), 200, np.uint8)  # a 1x1 frame: the box's ring is all there is, no foreground
    item = segment_item(frames, [(0, [0, 0, 1, 1])])
    GrabCutSegmenter(AnnotateConfig()).process([item])
    assert item.ok and item.groundings == []
    assert item.dropped[0]["reason"].startswith("grabcut failed on a 1x1 px box: ")
