"""Features: thumbnail values worked out by hand; a tiny random CLIP saved and loaded like the real one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.features import (
    ClipEncoder,
    extract_features,
    load_clip,
    make_feature_extractor,
    pad_to_square,
    thumbnail_features,
)
from tests.annotate_helpers import PROJ, clip_cfg, item_with_frames


# --- thumbnail ----------------------------------------------------------------------------------------------


def test_thumbnail_is_the_block_mean_over_255_in_row_column_channel_order():
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[0::2, 0::2, 0] = 1  # each 2x2 block holds red 1, 2, 3, 1 -> mean 1.75 (a uint8 resize would give 2)
    frame[0::2, 1::2, 0] = 2
    frame[1::2, 0::2, 0] = 3
    frame[1::2, 1::2, 0] = 1
    frame[0:2, 30:32, 1] = 255  # green only in the top-right block: row 0, column 15
    frame[30:32, 0:2, 2] = 102  # blue only in the bottom-left block: row 15, column 0
    feat = thumbnail_features(frame[None])
    assert feat.shape == (1, 768) and feat.dtype == np.float32
    grid = feat[0].reshape(16, 16, 3)
    np.testing.assert_allclose(grid[..., 0], 1.75 / 255, rtol=1e-6)
    assert feat[0, (0 * 16 + 15) * 3 + 1] == pytest.approx(1.0)
    assert feat[0, (15 * 16 + 0) * 3 + 2] == pytest.approx(0.4)
    assert np.count_nonzero(grid[..., 1]) == 1 and np.count_nonzero(grid[..., 2]) == 1


def test_thumbnail_of_a_non_square_frame_averages_3x5_blocks():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    expected = frame.astype(np.float64).reshape(16, 3, 16, 5, 3).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(thumbnail_features(frame[None])[0].reshape(16, 16, 3), expected, atol=1e-6)


def test_thumbnail_stage_fills_feat_for_every_sample():
    frames = np.random.default_rng(1).integers(0, 256, (5, 36, 64, 3), dtype=np.uint8)
    item = item_with_frames(frames)
    stage = make_feature_extractor(AnnotateConfig())
    stage.process([item])
    assert item.ok and item.feat.shape == (5, 768) and item.feat.dtype == np.float32
    assert 0.0 <= item.feat.min() and item.feat.max() <= 1.0
    np.testing.assert_array_equal(item.feat, extract_features(frames))
    assert item.versions["features"].startswith("thumbnail 16x16")
    assert stage.resources().num_gpus == 0


def test_bad_frames_reject_the_item():
    item = item_with_frames(np.zeros((2, 8, 8, 3), np.uint8))
    item.clip.sample_frames = np.zeros((2, 8, 8), np.uint8)
    make_feature_extractor(AnnotateConfig()).process([item])
    assert item.error[0] == "features" and "expected (T, h, w, 3) uint8" in item.error[1]


# --- CLIP ---------------------------------------------------------------------------------------------------


def frames_16x9(t: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, 36, 64, 3), dtype=np.uint8)


def test_clip_stage_loads_the_dir_and_gives_image_embeds(clip_dir):
    from transformers import CLIPVisionModelWithProjection

    frames = frames_16x9()
    item = item_with_frames(frames)
    stage = make_feature_extractor(clip_cfg(clip_dir, batch_size=2))
    stage.process([item])
    assert item.ok, item.error
    assert item.feat.shape == (5, PROJ) and item.feat.dtype == np.float32
    # The same numbers as calling the model by hand on the processor's output.
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    pixels = stage.encoder.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (5, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds.numpy()
    np.testing.assert_allclose(item.feat, expected, atol=1e-5)
    assert "crop=center" in item.versions["features"]


def test_batches_give_the_same_result_as_one_by_one(clip_dir):
    model, processor = load_clip(clip_dir)
    frames = frames_16x9(t=7)
    whole = ClipEncoder(model, processor, batch_size=3)(frames)
    single = np.concatenate([ClipEncoder(model, processor, batch_size=1)(f[None]) for f in frames])
    np.testing.assert_allclose(whole, single, atol=1e-5)


def test_center_crop_ignores_the_sides_and_pad_does_not(clip_dir):
    model, processor = load_clip(clip_dir)
    centre, pad = ClipEncoder(model, processor, crop="center"), ClipEncoder(model, processor, crop="pad")
    assert pad.pad_colour == (122, 116, 104)  # CLIP's mean colour, as LLaVA's expand2square fills
    a = frames_16x9(t=2, seed=1)
    b = a.copy()
    b[:, :, :6] = 255 - b[:, :, :6]  # change the left 6 of 64 columns: outside CLIP's centre crop (middle 36)
    np.testing.assert_allclose(centre(a), centre(b), atol=1e-6)
    assert np.abs(pad(a) - pad(b)).max() > 1e-3
    assert np.abs(centre(a) - pad(a)).max() > 1e-3  # a 16:9 frame: the two crops differ
    square = np.random.default_rng(2).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(centre(square), pad(square), atol=1e-6)  # nothing to pad on a square frame


def test_pad_to_square_centres_the_frame_on_the_mean_colour():
    frame = np.full((2, 6, 3), 9, np.uint8)
    sq = pad_to_square(frame, (122, 116, 104))
    assert sq.shape == (6, 6, 3)
    assert (sq[2:4] == 9).all()
    assert (sq[:2] == [122, 116, 104]).all() and (sq[4:] == [122, 116, 104]).all()
    tall = pad_to_square(np.full((5, 2, 3), 9, np.uint8), (0, 0, 0))
    assert tall.shape == (5, 5, 3) and (tall[:, 1:3] == 9).all() and (tall[:, [0, 3, 4]] == 0).all()


def test_extract_features_plain_function_matches_the_stage(clip_dir):
    frames = frames_16x9(t=3)
    cfg = clip_cfg(clip_dir, crop="pad")
    item = item_with_frames(frames)
    make_feature_extractor(cfg).process([item])
    np.testing.assert_allclose(extract_features(frames, cfg.features), item.feat, atol=1e-6)


def test_a_full_clip_model_dir_loads_its_vision_half(tmp_path, clip_dir):
    """openai/clip-vit-large-patch14 is a whole CLIPModel (text + vision): its vision tower and projection load."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=PROJ))
    full.save_pretrained(tmp_path)
    CLIPImageProcessor.from_pretrained(clip_dir).save_pretrained(tmp_path)
    model, _ = load_clip(str(tmp_path))
    assert torch.equal(model.visual_projection.weight, full.visual_projection.weight)


def test_clip_config_errors_name_the_key(tmp_path, clip_dir):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with pytest.raises(ConfigError, match=r"^features\.weights: no CLIP model dir at None"):
        make_feature_extractor(clip_cfg(None)).setup()
    with pytest.raises(ConfigError, match=r"^features\.weights: no CLIP model dir"):
        load_clip(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"^features\.dtype: unknown 'fp8'"):
        load_clip(clip_dir, dtype="fp8")
    with pytest.raises(ConfigError, match=r"^features\.crop: unknown 'stretch'"):
        make_feature_extractor(clip_cfg(clip_dir, crop="stretch")).setup()
    with pytest.raises(ConfigError, match=r"^features\.backend: unknown backend 'dino'"):
        make_feature_extractor(_backend("dino"))
    # A vision tower without its projection would leave the projection random: refused, not silently used.
    vis = tmp_path / "vision_only"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(vis)
    # (how many weights it names depends on the transformers version: 1 on 5.24, all 24 on 5.17, which does not
    # map a CLIPVisionModel's keys onto the projection model's)
    with pytest.raises(ConfigError, match=r"^features\.weights: .* lacks \d+ weights"):
        load_clip(str(vis))
    # Weights of another shape than config.json says: refused too (transformers would re-initialise them).
    other = tmp_path / "other"
    shutil.copytree(clip_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["projection_dim"] = PROJ + 1
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"^features\.weights: cannot load CLIPVisionModelWithProjection"):
        load_clip(str(other))


def _backend(name: str) -> AnnotateConfig:
    cfg = AnnotateConfig()
    cfg.features.backend = name
    return cfg


def test_clip_resources_follow_the_device(clip_dir):
    assert make_feature_extractor(clip_cfg(clip_dir, device="cpu")).resources().num_gpus == 0
    assert make_feature_extractor(clip_cfg(clip_dir)).resources().num_gpus == 1  # auto: a GPU where there is one
    assert make_feature_extractor(clip_cfg(clip_dir, device="cuda")).resources().num_gpus == 1
