"""Tokenizers: train a small one offline (tests, the demo), load a real one, add the video placeholder.

Labels are placed by character offsets, so the tokenizer must be a fast (Rust `tokenizers`) one: only those
return offset mappings. The `<video>` placeholder is a special added token, so it is one token wherever it
appears; the model replaces it by one embedding per frame and never looks its id up in the embedding table
(so adding it to Vicuna's 32000-token vocabulary needs no resize).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from annotate.errors import ConfigError
from model.conversation import TEMPLATES, VICUNA_SYSTEM, Template

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as LLaMA's (<unk>, <s>, </s>) plus a pad


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, video_token: str = "<video>", min_frequency: int = 1,
    split_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (and the Vicuna template's fixed strings), LLaMA's special tokens.

    Byte-level means no text is ever unknown (emoji, accents), like LLaMA's byte fallback.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # split_digits: one token per digit, the space before a number kept with its first digit (" 2", "3"), so that
    # frame numbers ("From 23 to 41.") are a tens-digit token then a units-digit token that model/time_pointer.py
    # can point at, whatever merges the BPE would learn (" 23"). Not one digit per token with the space apart
    # (" ", "2", "3", as LLaMA writes them): with those the tiny demo LLM lost count of its digits ("From 56 to 7.")
    # and its captions degenerated (CIDEr 0). The BPE learns " 2" by itself at the demo's vocabulary; the split
    # makes it certain.
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if split_digits:
        steps.insert(0, pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + [video_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    fixed = [VICUNA_SYSTEM, "USER: ASSISTANT:"] + [p for t in TEMPLATES.values() for p in (t.video_prompt, t.image_prompt)]
    tok.train_from_iterator(list(texts) + fixed, trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Offsets keep their leading space out (trim_offsets); <s> starts every sequence, as LLaMA's tokenizer does.
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    prepare_tokenizer(tokenizer, video_token)
    return tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, video_token: str = "<video>") -> int:
    """Make `tokenizer` usable for PiTe: fast, a pad token (LLaVA uses <unk>), `video_token` special. Returns its id."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: label alignment needs offset mappings "
            "(load it with transformers' AutoTokenizer, which converts a sentencepiece tokenizer.model)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    if video_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([video_token], special_tokens=True)
    ids = tokenizer.encode(video_token, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(f"tokenizer: {video_token!r} does not encode to a single token ({ids})")
    return ids[0]


def load_tokenizer(path: str | Path, video_token: str = "<video>", key: str = "model.tokenizer") -> PreTrainedTokenizerFast:
    """A fast tokenizer from a local dir (tokenizer.json, or a sentencepiece tokenizer.model that transformers converts)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{key}: tokenizer dir {path} not found (a local dir with tokenizer.json or tokenizer.model)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prepare_tokenizer(tokenizer, video_token)
    return tokenizer


def check_template(tokenizer: PreTrainedTokenizerBase, template: Template) -> None:
    """The answer separator must be one special token (the eos), or LM labels could not end on it."""
    ids = tokenizer.encode(template.sep2, add_special_tokens=False)
    if len(ids) != 1 or ids[0] != tokenizer.eos_token_id:
        raise ConfigError(f"tokenizer: the template's sep2 {template.sep2!r} is not its eos token ({ids})")
