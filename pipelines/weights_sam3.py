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
from typing import Sequence

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
        # tiny: a small input and mask size; real: the processor's defaults, facebook/sam3's (1008, masks 288)
        small = dict(size={"height": TINY_IMAGE, "width": TINY_IMAGE}, mask_size={"height": 32, "width": 32})
        processor = Sam3Processor(image_processor=Sam3ImageProcessor(**(small if size == "tiny" else {})),
                                  tokenizer=tokenizer)
        seed_torch(seed)
        model = Sam3Model(sam3_config(size, len(vocab)))
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        say(f"sam3 ({size}, {n_params(model)})")
        del model
    return final


# --- the video propagators ------------------------------------------------------------------------------------

TINY_VIDEO = 128  # tiny propagators' input side (SAM 3's tracker: 112, a multiple of its 14-px patch)
SAM2_LARGE = dict(hidden=144, blocks=[2, 6, 36, 4], heads=[2, 4, 8, 16], windows=[8, 4, 16, 8],
                  global_blocks=[23, 33, 43], background=[7, 7])  # facebook/sam2.1-hiera-large's Hiera


def hiera(hidden: int, blocks, heads, windows, global_blocks, background, image: int = 1024, fpn: int = 256):
    """A SAM 2 vision config: Hiera with these stages, its FPN at `fpn` channels."""
    from transformers import Sam2HieraDetConfig, Sam2VisionConfig

    dims = [hidden * 2 ** i for i in range(4)]
    backbone = Sam2HieraDetConfig(hidden_size=hidden, image_size=[image, image], blocks_per_stage=blocks,
                                  embed_dim_per_stage=dims, num_attention_heads_per_stage=heads,
                                  window_size_per_stage=windows, global_attention_blocks=global_blocks,
                                  window_positional_embedding_background_size=background)
    return Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=dims[::-1], fpn_hidden_size=fpn,
                            backbone_feature_sizes=[[image // 4] * 2, [image // 8] * 2, [image // 16] * 2])


def tiny_memory(image: int, feat: int, edgetam: bool = False) -> dict:
    """The memory, prompt and mask-decoder settings of a tiny propagator. The memory encoder's output stays at 64
    channels (the memory attention's key size is fixed at 64) and the hidden size at twice that."""
    h = 128
    out = dict(prompt_encoder_config=dict(hidden_size=h, image_size=image, patch_size=image // feat,
                                          mask_input_channels=8),
               mask_decoder_config=dict(hidden_size=h, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                        iou_head_hidden_dim=32),
               memory_attention_hidden_size=h, memory_attention_num_layers=1, memory_encoder_hidden_size=h,
               memory_encoder_output_channels=64, mask_downsampler_embed_dim=h, memory_fuser_embed_dim=h,
               memory_fuser_intermediate_dim=64, memory_attention_rope_feat_sizes=[feat, feat])
    out["memory_attention_mlp_hidden_size" if edgetam else "memory_attention_feed_forward_hidden_size"] = 64
    return out


def video_config(family: str, size: str):
    """The propagator's architecture: published (`real`) or tiny."""
    from transformers import EdgeTamVideoConfig, Sam2VideoConfig, Sam3TrackerVideoConfig, Sam3VisionConfig

    if family == "sam2_video":
        if size == "real":
            return Sam2VideoConfig(vision_config=hiera(**SAM2_LARGE))
        tiny = hiera(12, [1, 1, 2, 1], [1, 1, 2, 2], [4, 4, 4, 4], [3], [2, 2], image=TINY_VIDEO, fpn=128)
        return Sam2VideoConfig(vision_config=tiny, image_size=TINY_VIDEO, **tiny_memory(TINY_VIDEO, 8))
    if family == "edgetam_video":
        if size == "real":  # RepViT-M1 through timm, as the published EdgeTAM
            from transformers.models.edgetam.configuration_edgetam import EdgeTamVisionConfig

            return EdgeTamVideoConfig(vision_config=EdgeTamVisionConfig())
        tiny = hiera(12, [1, 1, 2, 1], [1, 1, 2, 2], [4, 4, 4, 4], [3], [2, 2], image=TINY_VIDEO, fpn=128)
        return EdgeTamVideoConfig(vision_config=tiny, image_size=TINY_VIDEO, perceiver_resampler_num_latents=16,
                                  perceiver_resampler_num_latents_2d=16, perceiver_resampler_hidden_size=64,
                                  perceiver_resampler_mlp_intermediate_size=128,
                                  perceiver_resampler_attention_head_dim=64, perceiver_resampler_num_layers=1,
                                  memory_attention_rope_k_sizes=[4, 4], **tiny_memory(TINY_VIDEO, 8, edgetam=True))
    if size == "real":
        return Sam3TrackerVideoConfig()
    vision = Sam3VisionConfig(backbone_config=dict(
        model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=TINY_IMAGE, patch_size=14, window_size=4, global_attn_indexes=[1], pretrain_image_size=TINY_IMAGE),
        fpn_hidden_size=128)
    return Sam3TrackerVideoConfig(vision_config=vision, image_size=TINY_IMAGE, **tiny_memory(TINY_IMAGE, 8))


def video_processor(family: str, size: str):
    from transformers import (Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor, Sam3ImageProcessor,
                              Sam3TrackerVideoProcessor)

    # tiny: small inputs; real: each processor's defaults (SAM 2: 1024; SAM 3: 1008, set on the video side too)
    side = (TINY_IMAGE if family == "sam3_tracker" else TINY_VIDEO) if size == "tiny" else 1008
    square = {"size": {"height": side, "width": side}}
    image = dict(square, mask_size={"height": side // 4, "width": side // 4}) if size == "tiny" else {}
    if family == "sam3_tracker":  # SAM 3 normalises with mean = std = 0.5, its video frames too
        frames = Sam2VideoVideoProcessor(**square, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return Sam3TrackerVideoProcessor(image_processor=Sam3ImageProcessor(**image), video_processor=frames)
    return Sam2VideoProcessor(image_processor=Sam2ImageProcessor(**image),
                              video_processor=Sam2VideoVideoProcessor(**(square if size == "tiny" else {})))


VIDEO_DIRS = {"sam2_video": "sam2-video", "edgetam_video": "edgetam-video", "sam3_tracker": "sam3-tracker-video"}


def write_video_propagator(out: Path, family: str, size: str, seed: int) -> Path:
    """DIR/<family dir>: the propagator model and its processor."""
    import transformers

    from annotate.propagate import FAMILIES

    final = out / VIDEO_DIRS[family]
    with staged(final) as tmp:
        tmp.mkdir(parents=True)
        seed_torch(seed)
        model = getattr(transformers, FAMILIES[family][0])(video_config(family, size))
        model.save_pretrained(tmp)
        video_processor(family, size).save_pretrained(tmp)
        say(f"{VIDEO_DIRS[family]} ({size}, {n_params(model)})")
        del model
    return final


def sam3_models(out: Path, size: str, seed: int, propagators: Sequence[str] = ()) -> list[str]:
    """SAM 3 and the propagators under `out` (default: all three at the tiny size; at the real size only the
    recipe's sam2_video, 0.9 GB, where SAM 3's tracker alone would add 1.9 GB); the overrides of
    configs/annotate/sam3.yaml, whose propagator is sam2_video (the first written when it is not among them)."""
    import gc

    families = list(propagators) or (list(VIDEO_DIRS) if size == "tiny" else ["sam2_video"])
    overrides = [f"ground.weights={write_sam3(out, size, seed)}"]
    written = {}
    for family in families:
        gc.collect()
        written[family] = write_video_propagator(out, family, size, seed)
    return overrides + [f"confidence.weights={written.get('sam2_video', next(iter(written.values())))}"]
