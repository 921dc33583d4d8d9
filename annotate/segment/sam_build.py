"""A segment-anything model whose size is read off its checkpoint (`segment.model_type: auto`).

segment-anything's registry knows three sizes (vit_b / vit_l / vit_h, all 1024 px, patch 16); a checkpoint of any
other size (the tiny random ones of `pite weights random --size tiny`) needs its architecture from somewhere, and
the tensor shapes carry all of it but two numbers:
- the image encoder's head count comes from the relative-position tables (head_dim = their width), so a checkpoint
  without them (use_rel_pos=False; no published SAM) is refused rather than guessed;
- the mask decoder's head count changes no shape at all: every published SAM uses 8, and so does `build_sam`.
The model is then built from segment-anything's own classes, exactly as its `_build_sam` does for the fixed sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Mapping

DECODER_HEADS = 8  # not recorded in any tensor shape; SAM's value for all three published sizes

ENC = "image_encoder."
DEC = "mask_decoder."


@dataclass(frozen=True)
class SamArch:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    image_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3


# segment_anything/build_sam.py's three sizes, to name a checkpoint that turns out to be one of them.
PUBLISHED = {
    "vit_b": SamArch(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14),
    "vit_l": SamArch(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14),
    "vit_h": SamArch(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14),
}


def _count(state: Mapping, prefix: str, suffix: str) -> int:
    """How many consecutive indexed modules `prefix{i}suffix` the state dict holds."""
    n = 0
    while f"{prefix}{n}{suffix}" in state:
        n += 1
    return n


def _need(state: Mapping, key: str):
    if key not in state:
        raise ValueError(f"no tensor {key}: not a segment-anything Sam state dict")
    return state[key]


def _attention_layout(state: Mapping, depth: int, grid: int) -> tuple[int, tuple[int, ...], int]:
    """(num_heads, global block indexes, window size) from each block's relative-position table: a global block's
    table spans the whole patch grid (2 * grid - 1 rows), a windowed block's spans its window."""
    first = f"{ENC}blocks.0.attn.rel_pos_h"
    if first not in state:
        raise ValueError("no relative-position tables (use_rel_pos=False): the head count cannot be read off it")
    head_dim = int(state[first].shape[1])
    rows = [int(_need(state, f"{ENC}blocks.{i}.attn.rel_pos_h").shape[0]) for i in range(depth)]
    global_idx = tuple(i for i, r in enumerate(rows) if r == 2 * grid - 1)
    windows = {(r + 1) // 2 for r in rows if r != 2 * grid - 1}
    if len(windows) > 1:
        raise ValueError(f"windowed blocks disagree on the window size ({sorted(windows)})")
    # All blocks global: the window size is never used (ImageEncoderViT passes 0 to global blocks).
    window = windows.pop() if windows else 0
    return int(state[f"{ENC}pos_embed"].shape[-1]) // head_dim, global_idx, window


def arch_from_state(state: Mapping) -> SamArch:
    """The architecture a Sam state dict was saved from; ValueError naming what is missing or inconsistent."""
    pos = _need(state, f"{ENC}pos_embed")  # (1, grid, grid, embed_dim)
    patch = _need(state, f"{ENC}patch_embed.proj.weight")  # (embed_dim, 3, patch, patch)
    embed_dim, grid, patch_size = int(pos.shape[-1]), int(pos.shape[1]), int(patch.shape[-1])
    depth = _count(state, f"{ENC}blocks.", ".norm1.weight")
    if depth == 0:
        raise ValueError(f"no {ENC}blocks: not a segment-anything Sam state dict")
    heads, global_idx, window = _attention_layout(state, depth, grid)
    prompt_dim = int(_need(state, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix").shape[1]) * 2
    out_chans = int(_need(state, f"{ENC}neck.0.weight").shape[0])
    if out_chans != prompt_dim:
        raise ValueError(f"image embedding has {out_chans} channels but prompts {prompt_dim}")
    tf = f"{DEC}transformer."
    return SamArch(
        embed_dim=embed_dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx, window_size=window,
        image_size=grid * patch_size, patch_size=patch_size,
        mlp_ratio=int(_need(state, f"{ENC}blocks.0.mlp.lin1.weight").shape[0]) / embed_dim,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=int(_need(state, "prompt_encoder.mask_downscaling.3.weight").shape[0]),
        decoder_depth=_count(state, f"{tf}layers.", ".norm1.weight"),
        decoder_mlp_dim=int(_need(state, f"{tf}layers.0.mlp.lin1.weight").shape[0]),
        attention_downsample_rate=prompt_dim // int(_need(state, f"{tf}final_attn_token_to_image.q_proj.weight")
                                                    .shape[0]),
        iou_head_depth=_count(state, f"{DEC}iou_prediction_head.layers.", ".weight"),
        iou_head_hidden_dim=int(_need(state, f"{DEC}iou_prediction_head.layers.0.weight").shape[0]),
        num_multimask_outputs=int(_need(state, f"{DEC}mask_tokens.weight").shape[0]) - 1,
    )


def build_sam(arch: SamArch):
    """A random Sam of `arch` from segment-anything's classes, with `_build_sam`'s fixed choices (LayerNorm eps 1e-6,
    qkv bias, relative positions, SAM's pixel mean/std)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.image_size // arch.patch_size
    encoder = ImageEncoderViT(
        img_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, out_chans=arch.prompt_embed_dim, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size,
    )
    prompt = PromptEncoder(embed_dim=arch.prompt_embed_dim, image_embedding_size=(grid, grid),
                           input_image_size=(arch.image_size, arch.image_size), mask_in_chans=arch.mask_in_chans)
    transformer = TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                                    num_heads=DECODER_HEADS, mlp_dim=arch.decoder_mlp_dim,
                                    attention_downsample_rate=arch.attention_downsample_rate)
    decoder = MaskDecoder(transformer_dim=arch.prompt_embed_dim, transformer=transformer,
                          num_multimask_outputs=arch.num_multimask_outputs, iou_head_depth=arch.iou_head_depth,
                          iou_head_hidden_dim=arch.iou_head_hidden_dim)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def describe(arch: SamArch) -> str:
    """`vit_h` for a published size, else the numbers that set its cost, for the sample's provenance."""
    for name, known in PUBLISHED.items():
        if known == arch:
            return name
    return "vit e{embed_dim} d{depth} h{num_heads} img{image_size}/{patch_size}".format(**asdict(arch))
