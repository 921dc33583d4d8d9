"""CLIP across the clips of an actor batch: ceil(frames / features.batch_size) vision forwards, the same features as
one clip at a time, CLIP's preprocessing on the device equal to its processor's, bfloat16 close to float32, and a
failure that rejects only its own clip. The thumbnail backend is untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.features import (
    ClipEncoder, load_clip, make_feature_extractor, pad_to_square, pad_to_square_tensor, thumbnail_features,
)
from tests.annotate_helpers import clip_cfg, item_with_frames

# (T, h, w) of four clips: different lengths, and sizes that CLIP's resize + crop bring to one 32x32 stack
CLIPS = [(5, 36, 64), (7, 40, 40), (3, 64, 36), (6, 36, 64)]
BATCH = 4


def clip_items(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [item_with_frames(rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)) for t, h, w in CLIPS]


def count_forwards(stage, fail=None) -> list[int]:
    """Wrap the CLIP model's forward: record the frames of each call; `fail(pixel_values)` True makes it raise."""
    stage.ready()
    calls, inner = [], stage.encoder.model.forward

    def forward(*args, **kwargs):
        if fail is not None and fail(kwargs["pixel_values"]):
            raise RuntimeError("CUDA out of memory (injected)")
        calls.append(kwargs["pixel_values"].shape[0])
        return inner(*args, **kwargs)

    stage.encoder.model.forward = forward
    return calls


@pytest.mark.parametrize("crop", ["center", "pad"])
def test_frames_of_all_clips_in_ceil_total_over_batch_forwards(clip_dir, crop):
    stage = make_feature_extractor(clip_cfg(clip_dir, batch_size=BATCH, crop=crop))
    calls = count_forwards(stage)
    items = clip_items()
    stage.process(items)
    total = sum(t for t, _, _ in CLIPS)
    assert len(calls) == math.ceil(total / BATCH) == 6 and calls == [4, 4, 4, 4, 4, 1]
    alone = make_feature_extractor(clip_cfg(clip_dir, batch_size=BATCH, crop=crop))
    for item in items:
        assert item.ok and item.feat.shape == (len(item.clip.sample_frames), 24) and item.feat.dtype == np.float32
        one = item_with_frames(item.clip.sample_frames)
        alone.process([one])
        np.testing.assert_allclose(item.feat, one.feat, atol=1e-5)


def test_device_preprocessing_matches_the_processor(clip_dir):
    model, processor = load_clip(clip_dir)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 36, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 50, 30, 3), dtype=np.uint8)
    centre = ClipEncoder(model, processor, crop="center")._pixels([a, b])
    want = processor(images=list(a) + list(b), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(centre.cpu(), want, atol=1e-6)
    pad = ClipEncoder(model, processor, crop="pad")
    colour = pad.pad_colour
    want = processor(images=[pad_to_square(f, colour) for f in list(a) + list(b)], return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pad._pixels([a, b]).cpu(), want, atol=1e-6)


def test_pad_to_square_tensor_is_pad_to_square():
    rng = np.random.default_rng(2)
    for h, w in [(6, 10), (9, 4), (5, 5)]:
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        got = pad_to_square_tensor(torch.from_numpy(frames).permute(0, 3, 1, 2), (122, 116, 104))
        want = np.stack([pad_to_square(f, (122, 116, 104)) for f in frames])
        np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), want)


def test_bad_frames_reject_only_their_clip(clip_dir):
    stage = make_feature_extractor(clip_cfg(clip_dir, batch_size=BATCH))
    calls = count_forwards(stage)
    items = clip_items()
    items[1].clip.sample_frames = items[1].clip.sample_frames[..., 0]  # (T, h, w): no channels
    items[2].clip = None
    stage.process(items)
    assert items[1].error[0] == "features" and "expected (T, h, w, 3) uint8" in items[1].error[1]
    assert items[2].error == ("features", "no decoded clip (the decode stage did not run)")
    assert items[0].ok and items[3].ok and items[0].feat.shape == (5, 24) and items[3].feat.shape == (6, 24)
    assert calls == [4, 4, 3]  # 11 frames of the two good clips


def test_a_forward_that_fails_for_the_batch_reruns_each_clip_alone(clip_dir):
    reference = clip_items()
    make_feature_extractor(clip_cfg(clip_dir, batch_size=BATCH)).process(reference)
    stage = make_feature_extractor(clip_cfg(clip_dir, batch_size=BATCH))
    items = clip_items()
    items[2].clip.sample_frames[:] = 0  # black frames: the injected failure follows them, batched or alone
    count_forwards(stage, fail=lambda px: bool((px.flatten(2).std(dim=2) == 0).all(dim=1).any()))
    stage.process(items)
    assert items[2].error == ("features", "RuntimeError: CUDA out of memory (injected)")
    for k in (0, 1, 3):
        np.testing.assert_allclose(items[k].feat, reference[k].feat, atol=1e-5)


# bfloat16 vs float32 cosine similarity per frame, tiny random CLIP (test_features' clip_dir), 40 frames of noise on
# the CPU: measured min 0.99997. Bound: 0.999, 30x the measured gap to 1 (ViT-L/14 with random weights measured
# min 0.99990 over 8 frames, inside it too).
COSINE_BOUND = 0.999


def test_bfloat16_features_stay_close_to_float32(clip_dir):
    frames = np.random.default_rng(4).integers(0, 256, (40, 36, 64, 3), dtype=np.uint8)
    feats = {}
    for dtype in ("float32", "bfloat16"):
        model, processor = load_clip(clip_dir, dtype)
        feats[dtype] = ClipEncoder(model, processor, dtype=dtype, batch_size=16)(frames)
    a, b = feats["float32"], feats["bfloat16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"bf16 vs fp32 cosine: min {cosine.min():.6f} mean {cosine.mean():.6f}")
    assert cosine.min() >= COSINE_BOUND
    assert np.abs(a - b).max() > 0  # bf16 did run


def test_thumbnail_backend_is_one_clip_at_a_time_as_before():
    items = clip_items()
    make_feature_extractor(AnnotateConfig()).process(items)
    for item in items:
        np.testing.assert_array_equal(item.feat, thumbnail_features(item.clip.sample_frames))
