"""SAM across the clips of a batch: one image-encoder call per `segment.batch_size` grounding frames, the same masks
as one clip at a time, a bfloat16 encoder close to float32, and a failure that rejects only its own clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.device import enable_tf32
from annotate.errors import ConfigError
from annotate.item import ClipItem
from annotate.segment import SamSegmenter, select_best_masks
from annotate.segment.sam import encode, preprocess_frame
from tests.annotate_helpers import iou, segment_item, tiny_sam

# (height, width, frames) of the four clips: sizes differ, so the stack mixes differently padded images.
CLIPS = [(48, 80, 4), (64, 64, 3), (40, 100, 5), (90, 60, 3)]
# The random tiny SAM's single-mask logits (box prompts ask for one mask) span only about [-0.03, 0.04], 97 % of
# pixels above SAM's 0.0: its masks would cover nearly every frame and agree whatever the precision. A threshold
# near their median (0.014; 0.012 gives masks of ~60 % of the frame, long boundaries) makes a precision error show.
SPLIT_THRESHOLD = 0.012


def split_sam():
    """The tiny SAM of tests/test_segment.py with masks of ~60 % of the frame: comparing them means something."""
    model = tiny_sam()
    model.mask_threshold = SPLIT_THRESHOLD
    return model


def clips(seed: int = 0) -> list[ClipItem]:
    """Four clips of noise frames; frame t of a clip grounds 1 + t % 2 boxes. Clip 0 also has a box outside its
    frame and a degenerate one, both on frame 0 (which keeps its good boxes); 15 frames have a box to segment."""
    rng = np.random.default_rng(seed)
    out = []
    for k, (h, w, f) in enumerate(CLIPS):
        frames = rng.integers(0, 256, (f, h, w, 3), dtype=np.uint8)
        boxes = []
        for t in range(f):
            for j in range(1 + t % 2):
                x0, y0 = (0.1 + 0.4 * j) * w, (0.1 + 0.1 * t) * h
                boxes.append((t, [x0, y0, x0 + 0.45 * w, y0 + 0.5 * h]))
        if k == 0:
            boxes += [(0, [w + 5.0, 0, w + 20.0, 10]), (0, [10.0, 10, 10, 30])]
        out.append(segment_item(frames, boxes))
    return out


def stage(model, batch_size: int = 8, dtype: str = "float32") -> SamSegmenter:
    cfg = AnnotateConfig()
    cfg.segment.backend, cfg.segment.device = "sam", "cpu"
    cfg.segment.batch_size, cfg.segment.dtype = batch_size, dtype
    return SamSegmenter.from_model(cfg, model)


def count_encoder_calls(monkeypatch, seg: SamSegmenter, fail=None) -> list[int]:
    """Patch the image encoder to record the stack size of each call; `fail(x)` True makes a call raise."""
    seg.ready()
    calls: list[int] = []
    forward = seg.model.image_encoder.forward

    def counted(x):
        calls.append(int(x.shape[0]))
        if fail is not None and fail(x):
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(x)

    monkeypatch.setattr(seg.model.image_encoder, "forward", counted)
    return calls


# Pixels a mask may differ by between two stack compositions of the same float32 model. The CPU GEMMs sum in an
# order that depends on the stack size: measured, the embeddings of one image alone and in a stack differ by up to
# 1.7e-6, the mask logits by up to 3.8e-7, while the pixel nearest SPLIT_THRESHOLD sat 4.6e-7 from it. No pixel
# differed here (torch 2.14, 2 threads), but exact equality would hinge on the BLAS kernel of the machine; a couple
# of boundary pixels out of ~4000 per mask is the most another one can flip.
FLIP_PIXELS = 2


def outcome(item: ClipItem):
    return [g.phrase_index for g in item.groundings], [d["reason"] for d in item.dropped]


def assert_same_masks(got: list[ClipItem], want: list[ClipItem]) -> None:
    for a, b in zip(got, want):
        assert outcome(a) == outcome(b)  # the same objects kept, the same ones dropped for the same reasons
        assert len(a.masks) == len(b.masks)
        for m, n, g, h in zip(a.masks, b.masks, a.groundings, b.groundings):
            assert m.shape == n.shape and int((m != n).sum()) <= FLIP_PIXELS
            assert abs(g.mask_area - h.mask_area) <= FLIP_PIXELS / m.size


def test_one_encoder_call_per_stack_across_all_clips_and_the_same_masks_as_alone(monkeypatch):
    model = split_sam()
    batched = clips()
    seg = stage(model, batch_size=3)
    calls = count_encoder_calls(monkeypatch, seg)
    seg.process(batched)
    assert all(it.ok for it in batched), [it.error for it in batched]
    assert calls == [3, 3, 3, 3, 3]  # 15 grounding frames of 4 clips: ceil(15 / 3) calls, none per frame
    assert [d["reason"] for d in batched[0].dropped] == ["degenerate box", "box outside the frame"]
    assert all(m.shape == (h, w) and m.dtype == bool for it, (h, w, _) in zip(batched, CLIPS) for m in it.masks)

    alone = clips()
    for item in alone:
        stage(model, batch_size=3).process([item])
    assert_same_masks(batched, alone)
    with torch.inference_mode():  # the encoder itself: one image's embedding alone and inside a stack of three
        x = torch.cat([preprocess_frame(model, f, "cpu")[0] for f in alone[0].clip.track_frames[:3]])
        torch.testing.assert_close(encode(model, x, torch.float32)[1:2], encode(model, x[1:2], torch.float32),
                                   rtol=1e-5, atol=1e-5)


def test_bfloat16_encoder_agrees_with_float32_on_the_cpu():
    fp32, bf16 = split_sam(), split_sam()
    want, got = clips(), clips()
    stage(fp32, dtype="float32").process(want)
    seg = stage(bf16, dtype="bfloat16")
    seg.process(got)
    assert next(seg.model.image_encoder.parameters()).dtype == torch.bfloat16
    assert {p.dtype for m in (seg.model.prompt_encoder, seg.model.mask_decoder) for p in m.parameters()} == {
        torch.float32}
    assert "encoder bfloat16" in got[0].versions["segment"]
    assert [outcome(a) for a in got] == [outcome(b) for b in want]  # the same objects kept and dropped
    coverage = np.mean([m.mean() for it in want for m in it.masks])
    assert 0.3 < coverage < 0.9  # masks with long boundaries: the bound below can fail
    ious = [iou(a, b) for x, y in zip(got, want) for a, b in zip(x.masks, y.masks)]
    # Measured (torch 2.14 CPU, seeds 0-3 of `clips`, 21 objects each): per-object IoU min 0.9923-0.9936, mean
    # 0.9964. bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2 %); against this model's logit spread of
    # ~0.12 that moves a thin band of boundary pixels. 0.98 leaves 2.5x the worst measured loss (0.0077).
    assert min(ious) >= 0.98, sorted(ious)[:3]

    # The embeddings themselves, image by image. Measured (seeds 0-3): relative L2 error max 0.0084-0.0090, mean
    # 0.0075 (a few bfloat16 roundings per layer compound to ~1 %); bounded at 2x the max.
    errors = []
    with torch.inference_mode():
        for item in clips():
            for frame in item.clip.track_frames:
                x, _ = preprocess_frame(seg.model, frame, "cpu")
                e32, e16 = encode(fp32, x, torch.float32), encode(bf16, x, torch.bfloat16)
                assert e16.dtype == torch.float32  # the decoder reads fp32 embeddings
                errors.append(float((e16 - e32).norm() / e32.norm()))
    assert max(errors) < 0.02, max(errors)


def test_device_preprocessing_gives_the_masks_of_sam_predictor():
    """SamPredictor.set_image resizes uint8 with PIL; the batched path resizes on the device with torch's antialiased
    bilinear, so a few boundary pixels differ. Measured on these noise frames (seeds 0-3): IoU min 0.9917-0.9930,
    mean 0.9966; bounded at 0.97, 3.5x the worst measured loss."""
    from segment_anything import SamPredictor

    model = split_sam()
    seg = stage(model)
    seg.setup()
    predictor = SamPredictor(model)
    ious = []
    for item in clips():
        for t in sorted({g.track_frame for g in item.groundings}):
            frame = item.clip.track_frames[t]
            boxes = [g.box for g in item.groundings if g.track_frame == t][:2]  # clip 0's bad boxes come last
            with torch.inference_mode():
                predictor.set_image(frame)
                box_t = predictor.transform.apply_boxes_torch(torch.tensor(np.stack(boxes)).float(), frame.shape[:2])
                masks, iou_pred, _ = predictor.predict_torch(None, None, boxes=box_t, multimask_output=False)
            want = select_best_masks(masks, iou_pred).numpy()
            ious += [iou(a, b) for a, b in zip(seg.segment_frame(frame, boxes, None), want)]
    assert min(ious) >= 0.97, sorted(ious)[:3]


def test_a_box_prompt_asks_sam_for_one_mask(monkeypatch):
    """SAM's documentation and Grounded-SAM prompt a box with multimask_output=False: a box already says which
    object, and the three-way output (for an ambiguous point) tends to pick parts of it."""
    from segment_anything import SamPredictor

    seen = []
    inner = SamPredictor.predict_torch

    def predict_torch(self, *args, **kwargs):
        seen.append(kwargs["multimask_output"])
        return inner(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict_torch", predict_torch)
    seg = stage(split_sam())
    seg.process(clips())
    assert seen and not any(seen)


def test_a_failing_clip_is_rejected_alone(monkeypatch):
    model = split_sam()
    items = clips()
    gray = items[1].clip.track_frames[..., 0]  # (f, h, w): not an RGB frame, it fails in preprocessing
    items[1].clip.track_frames = gray
    no_clip = ClipItem(row=9, video_id="v9", video="x.mp4", caption="")
    seg = stage(model, batch_size=3)
    calls = count_encoder_calls(monkeypatch, seg)
    seg.process(items + [no_clip])
    assert [it.ok for it in items] == [True, False, True, True] and not no_clip.ok
    assert items[1].error[0] == "segment" and "expected (h, w, 3) uint8 RGB" in items[1].error[1]
    assert "no decoded clip" in no_clip.error[1]
    assert calls == [3, 3, 3, 3]  # the 12 frames of the three good clips
    good = clips()
    stage(model).process([good[0], good[2], good[3]])
    assert_same_masks([items[0], items[2], items[3]], [good[0], good[2], good[3]])


def test_a_stack_that_fails_is_retried_image_by_image(monkeypatch):
    model = split_sam()
    want = clips()
    stage(model, batch_size=4).process(want)

    items = clips()
    seg = stage(model, batch_size=4)
    calls = count_encoder_calls(monkeypatch, seg, fail=lambda x: x.shape[0] > 1)  # e.g. out of memory on a stack
    seg.process(items)
    assert all(it.ok for it in items) and calls == [4, 1, 1, 1, 1] * 3 + [3, 1, 1, 1]
    assert_same_masks(items, want)

    # One image that fails even alone (clip 2's frames are all 7): only clip 2 is rejected.
    items = clips()
    items[2].clip.track_frames[:] = 7
    seg = stage(model, batch_size=4)
    pixel = (7 - model.pixel_mean[0, 0, 0]) / model.pixel_std[0, 0, 0]
    count_encoder_calls(monkeypatch, seg, fail=lambda x: bool(torch.isclose(x[:, 0, 0, 0].float(), pixel).any()))
    seg.process(items)
    assert [it.ok for it in items] == [True, True, False, True]
    assert items[2].error == ("segment", "RuntimeError: CUDA out of memory (simulated)")
    assert_same_masks([items[0], items[1], items[3]], [want[0], want[1], want[3]])


def test_precision_and_batch_settings_are_checked():
    for key, value, message in [("dtype", "fp8", r"^segment\.dtype: unknown 'fp8'"),
                                ("batch_size", 0, r"^segment\.batch_size: must be >= 1, got 0")]:
        seg = stage(tiny_sam())
        setattr(seg.cfg.segment, key, value)
        with pytest.raises(ConfigError, match=message):
            seg.setup()
    assert (AnnotateConfig().segment.dtype, AnnotateConfig().segment.batch_size) == ("auto", 8)
    seg = stage(tiny_sam(), dtype="auto")
    seg.setup()
    assert seg.dtype == torch.float32  # auto on the CPU
    assert {p.dtype for p in seg.model.parameters()} == {torch.float32}


def test_tf32_only_for_a_cuda_device():
    # Plain process-wide settings, readable without a GPU (monkeypatch cannot restore them: torch serves them through
    # __getattr__), so they are put back by hand.
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = False
        for device in ("cpu", "mps"):
            enable_tf32(device)
            assert [f.allow_tf32 for f in flags] == [False, False]
        enable_tf32("cuda:0")
        assert [f.allow_tf32 for f in flags] == [True, True]
    finally:
        for f, value in zip(flags, before):
            f.allow_tf32 = value
