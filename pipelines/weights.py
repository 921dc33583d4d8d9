"""`pite weights random`: random weights for every production backend, on disk in the form users download.

    pite weights random --size tiny|real --out DIR [--seed 0] [--sam-type vit_b|vit_l|vit_h] [--recipe sam3]

With them the production recipe (configs/annotate/pite143k.yaml) runs end to end where the real checkpoints cannot
be fetched: `tiny` for CPU tests (seconds), `real` for benchmarks of time and memory (the published sizes, GBs on
disk; the outputs mean nothing). Every file is read back by the loader the pipeline uses, not a second path:

    DIR/grounding-dino/           Grounding DINO HF dir (save_pretrained + processor with a BERT tokenizer)
    DIR/sam_<type>.pth            segment-anything state dict (tiny: a small Sam, segment.model_type=auto)
    DIR/cotracker3_offline.pth    CoTracker3 offline state dict (only when `cotracker` imports; no size knob)
    DIR/clip-vit-large-patch14/   CLIPVisionModelWithProjection HF dir + CLIPImageProcessor
    --recipe sam3: SAM 3 and the mask propagators instead of Grounding DINO and SAM (pipelines/weights_sam3.py)

stdout: the `key=value` overrides that point the recipe at them; progress goes to stderr. Each model is built
right after `torch.manualseed_torch(seed)`, so a file depends on (size, seed) and the library versions alone.
"""

from __future__ import annotations

import argparse
import gc
import string
import sys
import time
from pathlib import Path

from annotate.errors import ConfigError
from pipelines.weights_files import n_params, say, seed_torch, staged
from pipelines.weights_sam3 import VIDEO_DIRS, sam3_models

SIZES = ("tiny", "real")
RECIPES = ("pite143k", "sam3")
SAM_TYPES = ("vit_b", "vit_l", "vit_h")
BERT_BASE_VOCAB = 30522  # bert-base-uncased, the text side of IDEA-Research/grounding-dino-base
# Words the tokenizer keeps whole; anything else falls back to single characters, which a WordPiece vocab allows.
WORDS = (
    "a an the two three one some of on in at to and with near next behind over under by from is are its his her "
    "man woman person people child dog cat bird horse car ball cup chair table sofa lamp pillow pillows book phone "
    "bottle box bag hand head shirt hat tree grass water road door window wall floor "
    "red blue green yellow orange purple pink brown black white grey gray striped checkered dotted "
    "square rectangle triangle diamond star hexagon circle small large big"
).split()


# --- Grounding DINO ---------------------------------------------------------------------------------------------


def bert_vocab(size: str) -> list[str]:
    """A WordPiece vocab laid out as bert-base-uncased's where Grounding DINO hard-codes ids ([CLS] 101, [SEP] 102,
    '.' 1012, '?' 1029): specials, [unusedN] fillers, printable ASCII without capitals from id 999 on; then the
    '##' letters and digits and WORDS; `real` pads with [unusedN] to BERT-base's 30522 rows."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 999 - len(vocab))]
    vocab += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    vocab += [w for w in dict.fromkeys(WORDS) if w not in vocab]
    if size == "real":
        vocab += [f"[unused{i}]" for i in range(994, 994 + BERT_BASE_VOCAB - len(vocab))]
    assert (vocab.index("[CLS]"), vocab.index("."), vocab.index("?")) == (101, 1012, 1029)
    return vocab


GDINO_SWIN = {  # the published Grounding DINO backbones (HF IDEA-Research/grounding-dino-base / -tiny)
    "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
}


def gdino_config(size: str, vocab_size: int, variant: str = "base"):
    """grounding-dino-base's or -tiny's architecture (Swin-B 384 or Swin-T 224, BERT-base) or a tiny one that runs
    in milliseconds (`size` tiny: Swin embed 8, BERT hidden 8, d_model 32)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    if size == "real":
        return GroundingDinoConfig(
            backbone_config=SwinConfig(**GDINO_SWIN[variant], out_indices=[2, 3, 4]),
            text_config=BertConfig(vocab_size=vocab_size),  # BertConfig's defaults are BERT-base's
            d_model=256, encoder_layers=6, decoder_layers=6, num_queries=900, max_text_len=256)
    return GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], out_indices=[2, 3, 4]),
        text_config=BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
                               vocab_size=vocab_size),
        # 2 decoder layers: with 1, transformers fails tying the shared box heads
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, max_text_len=16)


def write_grounding_dino(out: Path, size: str, seed: int, variant: str = "base") -> Path:
    from transformers import BertTokenizerFast, GroundingDinoForObjectDetection, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_grounding_dino import GroundingDinoImageProcessor

    final = out / "grounding-dino"
    with staged(final) as tmp:
        tmp.mkdir(parents=True)
        vocab = bert_vocab(size)
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizerFast(vocab=str(tmp / "vocab.txt"))  # vocab_file= is ignored in transformers 5
        # tiny: small images keep a CPU forward at milliseconds; real: the published 800 / 1333
        sizes = {"shortest_edge": 64, "longest_edge": 96} if size == "tiny" else None
        processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=sizes),
                                           tokenizer=tokenizer)
        seed_torch(seed)
        model = GroundingDinoForObjectDetection(gdino_config(size, len(vocab), variant))
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        say(f"grounding-dino ({size}{'' if size == 'tiny' else ' ' + variant}, {n_params(model)})")
        del model
    return final


# --- SAM --------------------------------------------------------------------------------------------------------


def tiny_sam_arch():
    """64 px, 8 px patches: an 8x8 grid with 4x4 windows and one global block, so the size reader sees both."""
    from annotate.segment.sam_build import SamArch

    return SamArch(embed_dim=16, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4, image_size=64,
                   patch_size=8, mlp_ratio=2.0, prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1,
                   decoder_mlp_dim=32, iou_head_depth=2, iou_head_hidden_dim=16)


def write_sam(out: Path, size: str, sam_type: str, seed: int) -> tuple[Path, str]:
    """(checkpoint, segment.model_type): the registry's build for a named size; a tiny one for `auto`."""
    import torch
    from segment_anything import sam_model_registry

    from annotate.segment.sam_build import build_sam

    name, model_type = ("tiny", "auto") if size == "tiny" else (sam_type, sam_type)
    final = out / f"sam_{name}.pth"
    with staged(final) as tmp:
        seed_torch(seed)
        sam = build_sam(tiny_sam_arch()) if size == "tiny" else sam_model_registry[sam_type](checkpoint=None)
        torch.save(sam.state_dict(), tmp)  # a plain state dict of tensors, as the published .pth files
        say(f"sam ({name}, {n_params(sam)})")
        del sam
    return final, model_type


# --- CoTracker3 -------------------------------------------------------------------------------------------------


def write_cotracker(out: Path, seed: int) -> Path | None:
    """The state dict `CoTrackerPredictor(checkpoint=...)` loads: that of the model its builder makes with no
    checkpoint. None (and a note) when the package is absent."""
    try:
        from cotracker.predictor import CoTrackerPredictor  # imports seed torch: import before our seed
    except ImportError:
        say("cotracker is not installed: no cotracker3_offline.pth (install it from a co-tracker checkout with "
             "`pip install -e .`, or run with track.backend=lk)")
        return None
    import torch

    final = out / "cotracker3_offline.pth"
    with staged(final) as tmp:
        seed_torch(seed)
        model = CoTrackerPredictor(checkpoint=None).model  # CoTracker3 offline, the predictor's defaults
        torch.save(model.state_dict(), tmp)
        say(f"cotracker3 offline ({n_params(model)})")
        del model
    return final


# --- CLIP -------------------------------------------------------------------------------------------------------


def write_clip(out: Path, size: str, seed: int) -> Path:
    """CLIP ViT-L/14's vision tower + projection, or a tiny one with the same 768-d output (the sample schema's D)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    if size == "real":
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768)
        processor = CLIPImageProcessor()  # shortest side 224, centre crop 224, CLIP's mean and std
    else:
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=768)
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    final = out / "clip-vit-large-patch14"
    with staged(final) as tmp:
        seed_torch(seed)
        model = CLIPVisionModelWithProjection(config)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        say(f"clip ({size}, {n_params(model)})")
        del model
    return final


# --- command line -----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2 (main), not argparse's usage block
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="pite weights", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True, parser_class=_Parser)
    rnd = sub.add_parser("random", help="write random weights for every production backend")
    rnd.add_argument("--size", required=True, choices=SIZES, help="tiny: CPU tests; real: the published sizes")
    rnd.add_argument("--out", required=True, help="output folder")
    rnd.add_argument("--seed", type=int, default=0, help="torch seed set before building each model")
    rnd.add_argument("--sam-type", choices=SAM_TYPES, help="SAM size for --size real (default vit_h)")
    rnd.add_argument("--gdino", choices=tuple(GDINO_SWIN), default="base",
                     help="Grounding DINO for --size real: base (Swin-B, the GPU recipe) or tiny (Swin-T, cpu.yaml)")
    rnd.add_argument("--recipe", choices=RECIPES, default="pite143k",
                     help="pite143k: Grounding DINO, SAM, CoTracker3, CLIP; sam3: SAM 3, the three mask "
                          "propagators (the recipe uses sam2_video), CoTracker3, CLIP")
    rnd.add_argument("--propagators", default="",
                     help="--recipe sam3: comma-separated sam2_video, edgetam_video, sam3_tracker (default: all three "
                          "at --size tiny, sam2_video at --size real)")
    return ap


def write_all(out: Path, size: str, seed: int, sam_type: str, gdino: str = "base",
              recipe: str = "pite143k", propagators: str = "") -> list[str]:
    """Write every backend's weights of a recipe under `out`; the overrides that point the recipe at them."""
    if recipe == "sam3":
        overrides = sam3_models(out, size, seed, [p for p in propagators.split(",") if p])
    else:
        overrides = [f"ground.weights={write_grounding_dino(out, size, seed, gdino)}"]
        gc.collect()  # real sizes: let one model go before the next is built
        sam, model_type = write_sam(out, size, sam_type, seed)
        overrides += [f"segment.weights={sam}", f"segment.model_type={model_type}"]
    gc.collect()
    cotracker = write_cotracker(out, seed)
    if cotracker is not None:
        overrides.append(f"track.weights={cotracker}")
    overrides.append(f"features.weights={write_clip(out, size, seed)}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.size == "tiny" and args.sam_type:
            raise ConfigError("--sam-type: only for --size real (tiny writes a small SAM for segment.model_type=auto)")
        out = Path(args.out).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        unknown = set(p for p in args.propagators.split(",") if p) - set(VIDEO_DIRS)
        if unknown:
            raise ConfigError(f"--propagators: unknown {sorted(unknown)} (expected {', '.join(VIDEO_DIRS)})")
        overrides = write_all(out, args.size, args.seed, args.sam_type or "vit_h", args.gdino, args.recipe,
                              args.propagators)
    except (ConfigError, OSError) as exc:
        print(f"pite weights: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    say(f"{args.size} weights in {out} ({time.perf_counter() - t0:.1f} s)")
    print("\n".join(overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
