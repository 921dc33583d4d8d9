"""Random weights for the SAM 3 recipe's models, in the on-disk form of their Hugging Face repos (save_pretrained
dirs that transformers' own from_pretrained reads), at a tiny size for CPU tests or the published sizes:

    DIR/sam3/                 Sam3Model + Sam3Processor (CLIP tokenizer)        facebook/sam3 (840 M, SAM License)
    DIR/sam2-video/           Sam2VideoModel + Sam2VideoProcessor               facebook/sam2.1-hiera-large (Apache-2.0)
    DIR/edgetam-video/        EdgeTamVideoModel + Sam2VideoProcessor            yonigozlan/EdgeTAM-hf (Apache-2.0)
    DIR/sam3-tracker-video/   Sam3TrackerVideoModel + Sam3TrackerVideoProcessor facebook/sam3 (SAM License)

The tokenizer is written from scratch (byte-level alphabet, no merges: any text tokenises, one token a byte), with
CLIP's special tokens at CLIP's ids in the real size, so the text encoder's embedding table has the published shape.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.weights_files import n_params, say, seed_torch, staged

CLIP_VOCAB = 49408  # openai/clip-vit-*'s, SAM 3's text encoder's
TINY_IMAGE = 112  # a multiple of SAM 3's 14-px patch; masks come out at 32 x 32


def byte_vocab(size: int) -> dict[str, int]:
    """A CLIP-style vocab: the byte-level alphabet alone and with the end-of-word mark, fillers up to `size` - 2,
    then <|startoftext|> and <|endoftext|> (ids 49406 and 49407 at CLIP's size)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += [f"<unused{i}>" for i in range(max(0, size - 2 - len(tokens)))]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(tokens), len(tokens) + 1
    return vocab


def sam3_config(size: str, vocab_size: int):
    """facebook/sam3's architecture (Sam3Config's defaults) or a tiny one (ViT hidden 32, 2 layers, 112 px)."""
    from transformers import Sam3Config

    if size == "real":
        return Sam3Config()
    h = 32
    return Sam3Config(
        vision_config=dict(backbone_config=dict(
            model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=TINY_IMAGE, patch_size=14, pretrain_image_size=TINY_IMAGE,
            window_size=4, global_attn_indexes=[1]), fpn_hidden_size=h),
        # the processor pads text to 32 tokens, so 32 positions at least
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, projection_dim=32,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        geometry_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=h, num_layers=2, num_queries=10, num_attention_heads=2,
                                 intermediate_size=64),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2))


def write_sam3(out: Path, size: str, seed: int) -> Path:
    """DIR/sam3: the model and its processor."""
    from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3Model, Sam3Processor

    final = out / "sam3"
    with staged(final) as tmp:
        tmp.mkdir(parents=True)
        vocab = byte_vocab(CLIP_VOCAB if size == "real" else 0)
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", pad_token="<|endoftext|>")
        image = {"height": TINY_IMAGE, "width": TINY_IMAGE} if size == "tiny" else None
        masks = {"height": 32, "width": 32} if size == "tiny" else None
        processor = Sam3Processor(image_processor=Sam3ImageProcessor(size=image, mask_size=masks),
                                  tokenizer=tokenizer)
        seed_torch(seed)
        model = Sam3Model(sam3_config(size, len(vocab)))
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        say(f"sam3 ({size}, {n_params(model)})")
        del model
    return final
