"""Grounding DINO's text side and its scores, pure functions: phrases joined into prompts ("a cat. a dog.", split
when longer than the model's text limit), each phrase's own tokens found from the tokenizer's offsets, and the
rule that turns a forward's logits into one box per phrase. `groundingdino.py` runs them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

PICKS = ("best", "earliest")  # ground.pick


@dataclass
class Prompt:
    """One text prompt: some phrases joined as "a cat. a dog.", with where each sits in it."""

    text: str
    phrase_ids: list[int]  # indices into the item's phrases
    spans: list[tuple[int, int]]  # [start, end) of each phrase inside `text`
    token_positions: list[list[int]] = field(default_factory=list)  # each phrase's token indices in the input ids


def prompt_phrase(text: str) -> str:
    """Lowercase, one space between words, no '.' or '?' (the model splits phrases at those tokens)."""
    return " ".join(re.sub(r"[.?]", " ", text.lower()).split())


def join_prompt(pieces: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """'a cat. a dog.' and the span of each piece in it (transformers' own merge of candidate labels)."""
    text, spans = "", []
    for piece in pieces:
        if text:
            text += " "
        spans.append((len(text), len(text) + len(piece)))
        text += piece + "."
    return text, spans


def phrase_token_positions(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each char span, the tokens that overlap it; special tokens have empty (0, 0) offsets and never do."""
    return [[t for t, (s, e) in enumerate(offsets) if e > s and s < end and e > start] for start, end in spans]


def build_prompts(texts: Sequence[str], tokenizer, max_text_len: int) -> tuple[list[Prompt], dict[int, str]]:
    """Pack phrases, in order, into as few prompts as fit `max_text_len` tokens (special tokens included).
    Returns the prompts and {phrase index: reason} for phrases that fit no prompt."""
    def n_tokens(pieces):
        return len(tokenizer(join_prompt(pieces)[0])["input_ids"])

    skipped: dict[int, str] = {}
    groups: list[list[int]] = []
    current: list[int] = []
    pieces = [prompt_phrase(t) for t in texts]
    for i, piece in enumerate(pieces):
        if not piece or n_tokens([piece]) <= n_tokens([]) + 1:  # nothing but the '.' would be left
            skipped[i] = "phrase has no tokens for the grounding model"
        elif n_tokens([piece]) > max_text_len:
            skipped[i] = f"phrase longer than the model's text limit ({max_text_len} tokens)"
        elif n_tokens([pieces[j] for j in current] + [piece]) <= max_text_len:
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    if current:
        groups.append(current)

    prompts = []
    for ids in groups:
        text, spans = join_prompt([pieces[i] for i in ids])
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        prompts.append(Prompt(text, ids, spans, phrase_token_positions(offsets, spans)))
    return prompts, skipped


@dataclass
class PhraseHits:
    """Per frame b and phrase j of one prompt: the chosen query and its scores."""

    kept: np.ndarray  # (B, P) bool: a box passed both thresholds
    query: np.ndarray  # (B, P) int: the chosen query (the best-scoring one when none passed)
    score: np.ndarray  # (B, P) float: sigmoid of the max logit over the phrase's own tokens at that query
    box_score: np.ndarray  # (B, P) float: the query's confidence, max over all prompt tokens


def pick_boxes(logits, token_positions: Sequence[Sequence[int]], box_threshold: float,
               text_threshold: float) -> PhraseHits:
    """Grounding DINO's rule per phrase: a query is a box when its best token (any phrase) clears
    `box_threshold`; it is a box of phrase j when j's own tokens reach `text_threshold`. Among those, the query
    with the highest max logit over j's tokens wins. logits: (B, Q, L) with -inf at padding."""
    import torch

    probs = torch.as_tensor(logits).float().sigmoid()  # (B, Q, L)
    box_conf = probs.max(dim=-1).values  # (B, Q), as post_process_grounded_object_detection scores queries
    B, P = probs.shape[0], len(token_positions)
    out = PhraseHits(np.zeros((B, P), bool), np.zeros((B, P), np.int64), np.zeros((B, P)), np.zeros((B, P)))
    for j, positions in enumerate(token_positions):
        if not positions:  # a phrase the tokenizer left no token of can score nothing
            continue
        own = probs[:, :, list(positions)].max(dim=-1).values  # (B, Q)
        ok = (box_conf >= box_threshold) & (own >= text_threshold)
        best_any = own.argmax(dim=-1)
        best_ok = own.masked_fill(~ok, -1.0).argmax(dim=-1)
        kept = ok.any(dim=-1)
        query = torch.where(kept, best_ok, best_any)
        out.kept[:, j] = kept.numpy()
        out.query[:, j] = query.numpy()
        out.score[:, j] = own.gather(1, query[:, None])[:, 0].numpy()
        out.box_score[:, j] = box_conf.gather(1, query[:, None])[:, 0].numpy()
    return out


def ground_positions(num_track_frames: int, every_n: int) -> list[int]:
    """Tracking-frame positions to ground on: 0 and every n-th."""
    return list(range(0, num_track_frames, max(1, int(every_n))))
