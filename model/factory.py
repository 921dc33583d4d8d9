"""Build a PiteModel: from a local pretrained LLM dir (Vicuna), or tiny and random for tests and the CPU demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from model.checkpoint import load_llm
from model.config import PiteConfig
from model.conversation import get_template
from model.pite import PiteModel
from model.time_pointer import attach_time_tokens
from model.tokenizer import check_template, load_tokenizer, prepare_tokenizer, train_tokenizer


@dataclass
class TinyLlamaSettings:
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 64
    max_position_embeddings: int = 4096
    vocab_size: int = 1000  # of the tokenizer trained for it (the BPE may end smaller)
    # LLaMA's 10000 turns the fastest rotary pairs many times over a 100-frame video; a larger base keeps
    # attention by content alike at every distance, so what a tiny model learns on single frames (stage 1)
    # carries over to whole clips.
    rope_theta: float = 10000.0


def tiny_llama(tokenizer, settings: Optional[TinyLlamaSettings] = None, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised LLaMA (real architecture, tiny sizes) over `tokenizer`'s vocabulary."""
    s = settings or TinyLlamaSettings()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=s.intermediate_size,
        max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def build_tiny(texts: Iterable[str], config: Optional[PiteConfig] = None,
               settings: Optional[TinyLlamaSettings] = None, seed: int = 0) -> tuple[PiteModel, object]:
    """(model, tokenizer): a tokenizer trained on `texts`, a tiny random LLaMA, fresh adapter and heads. No LoRA."""
    config = config or PiteConfig()
    s = settings or TinyLlamaSettings()
    tokenizer = train_tokenizer(texts, vocab_size=s.vocab_size, video_token=config.video_token,
                                split_digits=config.time_pointer)  # the pointer needs one token per digit
    check_template(tokenizer, get_template(config.template))
    llm = tiny_llama(tokenizer, s, seed=seed)
    attach_time_tokens(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = PiteModel(llm, config, video_token_id=tokenizer.convert_tokens_to_ids(config.video_token))
    return model, tokenizer


def build_pretrained(llm_path: str | Path, config: Optional[PiteConfig] = None, tokenizer_path: Optional[str] = None,
                     dtype: str = "float32", device: str = "cpu") -> tuple[PiteModel, object]:
    """(model, tokenizer) on a local HF-format LLM dir (its tokenizer too unless `tokenizer_path`)."""
    config = config or PiteConfig()
    tokenizer = load_tokenizer(tokenizer_path or llm_path, config.video_token,
                               key="model.tokenizer" if tokenizer_path else "model.llm")
    check_template(tokenizer, get_template(config.template))
    llm = load_llm(llm_path, dtype=dtype, device=device)
    attach_time_tokens(config, tokenizer)
    model = PiteModel(llm, config, video_token_id=prepare_tokenizer(tokenizer, config.video_token))
    model.base_source = str(Path(llm_path).resolve())
    return model, tokenizer
