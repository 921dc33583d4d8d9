"""Checkpoints: save/load round trips (tiny base, external base + merged stages), missing trajectory head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from annotate.errors import ConfigError
from model.batch import collate
from model.checkpoint import load_checkpoint, merge_lora, save_checkpoint
from model.config import LabelConfig, LoraSettings, PiteConfig
from model.conversation import TEMPLATES
from model.factory import TinyLlamaSettings, build_pretrained, build_tiny
from model.labels import build_examples

T, K, D = 4, 3, 768
CAPTION = "the red ball and the red cube"
TINY = TinyLlamaSettings(vocab_size=300)


def _config(**kw):
    return PiteConfig(**{"n_points": K, "n_frames": T, "lora": LoraSettings(r=4, alpha=8, dropout=0.0), **kw})


def _batch(model, tok):
    rng = np.random.default_rng(0)
    sample = {
        "meta": {"video_id": "v", "caption": CAPTION, "duration": 2.0,
                 "objects": [{"phrase": "the red ball", "char_span": [0, 12], "frame": 0},
                             {"phrase": "the red cube", "char_span": [17, 29], "frame": 0}]},
        "traj": rng.random((2, K, T, 2)).astype(np.float16),
        "vis": np.ones((2, K, T), dtype=bool),
        "feat": rng.standard_normal((T, D)).astype(np.float16),
    }
    exs, _ = build_examples(sample, tok, TEMPLATES["pite"], model.video_token_id, LabelConfig(stage=2))
    return collate(exs, tok.pad_token_id)


def _perturb_lora(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def _outputs(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    return out.loss, out.logits, out.traj_pred


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6), (x - y).abs().max()


def test_round_trip_tiny_base_with_lora(tmp_path):
    model, tok = build_tiny([CAPTION] * 3, _config(head_shift=1, feature_backend="clip", feature_crop="pad"), TINY)
    model.apply_lora()
    _perturb_lora(model, 0)
    with torch.no_grad():
        model.trajectory_projector.bias.add_(0.5)  # differs from the repeated localisation head now
    batch = _batch(model, tok)
    before = _outputs(model, batch)
    save_checkpoint(model, tok, tmp_path / "ck", TEMPLATES["release"], extra={"stage": "stage2"})

    meta = json.loads((tmp_path / "ck" / "pite.json").read_text())
    assert meta["head_shift"] == 1 and meta["features"] == {"backend": "clip", "crop": "pad"}
    assert meta["template"]["video_prompt"] == "<video>\n{query}" and meta["extra"] == {"stage": "stage2"}
    assert meta["base"] == "base" and meta["lora"] == "lora"
    base_keys = load_file(str(tmp_path / "ck" / "base" / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in base_keys)

    loaded, tok2, template = load_checkpoint(tmp_path / "ck")
    assert template == TEMPLATES["release"] and loaded.config.head_shift == 1
    assert tok2(CAPTION)["input_ids"] == tok(CAPTION)["input_ids"]
    assert loaded.video_token_id == model.video_token_id and loaded.has_lora
    assert not any(p.requires_grad for n, p in loaded.llm.named_parameters())  # inference: frozen
    _assert_same(before, _outputs(loaded, batch))


def test_stage_chain_with_external_base_merges_in_order(tmp_path):
    # An "external" base dir, as a Vicuna download would be: weights + tokenizer.
    tiny, tok = build_tiny([CAPTION] * 3, _config(), TINY)
    tiny.llm.save_pretrained(str(tmp_path / "vicuna"))
    tok.save_pretrained(str(tmp_path / "vicuna"))

    model, tok = build_pretrained(tmp_path / "vicuna", _config())
    assert model.base_source == str((tmp_path / "vicuna").resolve())
    model.apply_lora()
    _perturb_lora(model, 1)
    save_checkpoint(model, tok, tmp_path / "stage1", TEMPLATES["pite"])

    # next stage: resume the stage-1 checkpoint, merge its LoRA, train a fresh one
    model, tok, _ = load_checkpoint(tmp_path / "stage1", trainable=True)
    assert any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" in n)
    merge_lora(model)
    assert not model.has_lora and len(model.merged_adapters) == 1
    model.apply_lora()
    _perturb_lora(model, 2)
    batch = _batch(model, tok)
    before = _outputs(model, batch)
    save_checkpoint(model, tok, tmp_path / "stage2", TEMPLATES["pite"])

    meta = json.loads((tmp_path / "stage2" / "pite.json").read_text())
    assert meta["merged"] == ["merged/00"] and meta["lora"] == "lora" and meta["base"] == model.base_source
    assert not (tmp_path / "stage2" / "base").exists()  # the base is referenced, not copied
    loaded, _, _ = load_checkpoint(tmp_path / "stage2")
    _assert_same(before, _outputs(loaded, batch))
    # leaving out the merged stage-1 adapter changes the outputs: the chain matters
    (tmp_path / "stage2" / "pite.json").write_text(json.dumps({**meta, "merged": []}))
    unmerged, _, _ = load_checkpoint(tmp_path / "stage2")
    assert not torch.allclose(_outputs(unmerged, batch)[1], before[1], atol=1e-4)


def test_merged_tiny_base_is_saved_with_its_merges(tmp_path):
    model, tok = build_tiny([CAPTION] * 3, _config(), TINY)
    model.apply_lora()
    _perturb_lora(model, 3)
    merge_lora(model)
    batch = _batch(model, tok)
    before = _outputs(model, batch)
    save_checkpoint(model, tok, tmp_path / "ck", TEMPLATES["pite"])
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    assert not loaded.has_lora
    _assert_same(before, _outputs(loaded, batch))


def test_missing_trajectory_head_starts_from_the_localisation_head(tmp_path):
    model, tok = build_tiny([CAPTION] * 3, _config(), TINY)
    with torch.no_grad():
        model.localization_projector.weight.normal_()
        model.trajectory_projector.weight.zero_()
    save_checkpoint(model, tok, tmp_path / "ck", TEMPLATES["pite"])
    heads = load_file(str(tmp_path / "ck" / "heads.safetensors"))
    save_file({k: v for k, v in heads.items() if not k.startswith("trajectory_projector.")},
              str(tmp_path / "ck" / "heads.safetensors"))
    loaded, _, _ = load_checkpoint(tmp_path / "ck")
    w = loaded.localization_projector.weight
    assert torch.equal(loaded.localization_projector.weight, model.localization_projector.weight)
    assert torch.equal(loaded.trajectory_projector.weight, w.repeat(K * T, 1))


def test_missing_or_foreign_dirs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="pite.json"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pite.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match="format"):
        load_checkpoint(tmp_path / "other")
    with pytest.raises(ConfigError, match="model.llm"):
        build_pretrained(tmp_path / "no-such-llm", _config())
