"""Typed settings of the PiTe network and of its label alignment.

`PiteConfig` is what a checkpoint stores (heads' shapes, readout rule, loss weights, prompt template, LoRA, the
feature backend the model was trained on); `LabelConfig` says how a sample becomes a training conversation.
The trainer's YAML nests them (`model:` / `labels:`); `pipelines.config.load_config` type-checks the merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from annotate.errors import ConfigError

ADAPTERS = ("linear", "colour_slots")  # model.adapters builds them


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    # None = every Linear of the LLM but lm_head (peft's "all-linear"); else module-name suffixes ("q_proj", ...).
    # The release also wraps the adapter and heads; ours trains those fully instead (they live outside the LLM).
    targets: Optional[list[str]] = None


@dataclass
class PiteConfig:
    feat_dim: int = 768  # per-frame feature size (CLIP ViT-L/14 image_embeds, or the 16x16x3 thumbnail)
    n_points: int = 3  # K points per object
    n_frames: int = 100  # T samples per clip: the trajectory head predicts K*T*2 numbers
    head_shift: int = 0  # 0: read a phrase's head at its last token (ours); 1: at the position before (release)
    lambda_lm: float = 1.0
    lambda_loc: float = 1.0
    lambda_traj: float = 1.0
    template: str = "release"  # key of model.conversation.TEMPLATES: release (PiTe's, VTimeLLM's) | demo
    video_token: str = "<video>"
    lora: LoraSettings = field(default_factory=LoraSettings)
    gradient_checkpointing: bool = False
    feature_backend: str = "thumbnail"  # what produced the features: thumbnail | clip
    feature_crop: str = "center"  # clip: center | pad
    # linear: one token per frame (the paper's, CLIP features); colour_slots: `adapter_slots` tokens per frame
    # from 16x16 thumbnails, with a cosine basis of `adapter_basis` terms over time (model/adapters.py says why).
    adapter: str = "linear"
    adapter_slots: int = 8
    adapter_basis: int = 8
    # A pointer term in both heads over each frame's visual tokens (model/readout.py); needs adapter_slots > 1.
    frame_readout: bool = False
    frame_readout_dim: int = 64
    frame_readout_source: str = "hidden"  # hidden: the visual tokens' last hidden states | tokens: the adapter's
    # A pointer over frames in the next-token logits of frame numbers ("From 23 to 41."), model/time_pointer.py;
    # needs the colour_slots adapter. Its digit tokens are read off the tokenizer when the model is built.
    time_pointer: bool = False
    time_pointer_dim: int = 64
    time_pointer_kernel: int = 9  # frames each of its two temporal convolutions sees
    time_token_ids: Optional[list[list[int]]] = None  # [[tens digit 0..9], [units digit 0..9]] token ids
    # what its query reads of the text before it: the LLM's hidden states | its input embeddings | words (word
    # vectors of the pointer's own)
    time_pointer_reads: str = "hidden"
    # how its distribution over the digits meets the LM's: product (a second expert, the LM's digit logits stay) |
    # replace (pointer-generator style: the LM says only whether a digit comes, the pointer which one; the demo's:
    # held-out R1@0.5 32.2 against 24.8 with product, model/time_pointer.py)
    time_pointer_mix: str = "product"

    def __post_init__(self):
        if self.head_shift not in (0, 1):
            raise ConfigError(f"model.head_shift: expected 0 or 1, got {self.head_shift}")
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"model.adapter: unknown {self.adapter!r} (expected {' | '.join(ADAPTERS)})")
        if self.frame_readout_source not in ("hidden", "tokens"):
            raise ConfigError(f"model.frame_readout_source: expected hidden or tokens, got {self.frame_readout_source!r}")
        if self.time_pointer_reads not in ("hidden", "embeddings", "words"):
            raise ConfigError(f"model.time_pointer_reads: expected hidden, embeddings or words, "
                              f"got {self.time_pointer_reads!r}")
        if self.time_pointer_mix not in ("product", "replace"):
            raise ConfigError(f"model.time_pointer_mix: expected product or replace, got {self.time_pointer_mix!r}")
        if self.adapter_basis < 1:
            raise ConfigError(f"model.adapter_basis: expected >= 1, got {self.adapter_basis}")
        if self.time_pointer and self.adapter != "colour_slots":
            raise ConfigError("model.time_pointer needs adapter: colour_slots (it points at the colour slots' "
                              f"keypoints), got {self.adapter!r}")
        if isinstance(self.lora, dict):  # from a checkpoint's JSON
            self.lora = LoraSettings(**self.lora)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PiteConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}")
        return cls(**data)


@dataclass
class LabelConfig:
    stage: int = 2  # 1 localisation (single frame) | 2 trajectories | 3 instruction tuning (events, conversations)
    max_length: int = 2048  # tokens after the video placeholder is expanded; longer examples are cut at the end
    caption_queries: list[str] = field(
        default_factory=lambda: ["Describe the video in detail.", "What happens in the video?", "describe the video"]
    )
    image_queries: list[str] = field(default_factory=lambda: ["Describe the image.", "What is in this image?"])
    dense_query: str = "Could you please detail the events that took place during different time segments in the video?"
    grounding_query: str = "During which frames can we see {query}?"
    max_grounding_turns: int = 4  # stage 3: temporal-grounding questions per example
    # stage 1: "ground" = one example per grounding frame (the annotation's); "random" = one example per sample at
    # a frame drawn (by the loader's seeded rng) among those where an object is visible, its visible objects
    # supervised there: the trajectories give positions on every frame, 100x the single-frame examples.
    stage1_frames: str = "ground"
    # stage 1 answers: "caption" = the whole caption, every phrase grounded at the frame supervised; "phrase" = one
    # example per grounded object, the answer its phrase alone ("a red ball."). A small model memorises which clip
    # a long caption belongs to instead of looking at the frame; a bare phrase leaves it only the frame to go by.
    stage1_text: str = "caption"
    caption_turn_in_stage3: bool = True  # stage 3: keep the caption turn (with its trajectory targets)
    # stage 3 question order: "fixed" = caption, conversations, dense captions, grounding (as listed); "shuffle" =
    # the question-answer pairs in a random order (loader's rng), so every kind of question also comes first, with
    # the video, as evaluation asks it (a model that only ever saw the caption question first answers any first
    # question with a caption).
    stage3_order: str = "fixed"
    # stage 3: the grounding questions as an example of their own (the caption, conversation and dense captions in
    # another), so a grounding answer cannot be copied from the dense captions of the same conversation: a model
    # that could learned to copy, and answered every held-out grounding question with one span.
    stage3_split: bool = False
    # stage 3: the grounding questions alone (no caption, conversation or dense captions; samples without events
    # give nothing), e.g. for a stage that trains the time pointer only (configs/train/demo.yaml).
    stage3_grounding_only: bool = False

    def __post_init__(self):
        if self.stage not in (1, 2, 3):
            raise ConfigError(f"labels.stage: expected 1, 2 or 3, got {self.stage}")
        if self.stage1_frames not in ("ground", "random"):
            raise ConfigError(f"labels.stage1_frames: expected ground or random, got {self.stage1_frames!r}")
        if self.stage1_text not in ("caption", "phrase"):
            raise ConfigError(f"labels.stage1_text: expected caption or phrase, got {self.stage1_text!r}")
        if self.stage3_order not in ("fixed", "shuffle"):
            raise ConfigError(f"labels.stage3_order: expected fixed or shuffle, got {self.stage3_order!r}")
        if self.max_length < 8:
            raise ConfigError(f"labels.max_length: expected >= 8, got {self.max_length}")
