"""Fixtures that several test modules share: tiny random models saved as their real on-disk forms."""

from __future__ import annotations

import pytest
import torch

from tests.annotate_helpers import PROJ, write_vocab


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Grounding DINO (Swin embed 8, BERT hidden 8, d_model 32: 156 K params), saved as an HF-format
    dir with a small image size."""
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoProcessor, SwinConfig)
    from transformers.models.grounding_dino.image_processing_grounding_dino import GroundingDinoImageProcessor

    root = tmp_path_factory.mktemp("gdino")
    n_vocab = write_vocab(root / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(root / "vocab.txt"))  # vocab_file= is ignored in transformers 5
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], out_indices=[2, 3, 4]),
        text_config=BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
                               vocab_size=n_vocab),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, max_text_len=16,
    )
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=tokenizer)
    weights = root / "weights"
    model.save_pretrained(weights)
    processor.save_pretrained(weights)
    return weights


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP vision tower + projection and a 32-px processor, saved as a local weights dir."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=PROJ)
    path = tmp_path_factory.mktemp("clip")
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)
