"""Token ids and labels of a rendered conversation: one tokenizer pass (or one per side of the video placeholder,
as the release), LM labels on the assistant answers, each phrase's last token, the placeholder expanded to one
position per frame. What a training example and a generation prompt are made of (model/labels.py builds them).

The readout rule (docs/design.md, "Readout rule"): a phrase is supervised at its LAST token, the token that covers the
phrase's last non-space character, found through the fast tokenizer's offset mapping whatever the tokenizer does to
spaces, punctuation or multi-byte characters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from annotate.errors import SchemaError
from model.conversation import Rendered, Template, first_message, render

IGNORE_INDEX = -100  # label of tokens without an LM target (transformers' and torch's default ignore index)


@dataclass
class Example:
    """One training conversation. P = supervised phrases, K points, T trajectory frames, D feature size."""

    input_ids: torch.Tensor  # long (L,), the placeholder expanded to one id per frame
    labels: torch.Tensor  # long (L,): IGNORE_INDEX except the assistant answers (and their closing eos)
    video: Optional[torch.Tensor]  # float32 (n_video, D): the frames spliced at the placeholder; None if no video
    head_pos: torch.Tensor  # long (P,): each supervised phrase's last token
    loc_target: torch.Tensor  # float32 (P, 2): points' mean at the grounding frame (stage 1)
    loc_mask: torch.Tensor  # bool (P,)
    traj_target: torch.Tensor  # float32 (P, K, T, 2): normalised x, y (stage 2, 3)
    traj_mask: torch.Tensor  # bool (P, K, T): supervised and visible
    phrases: list[str] = field(default_factory=list)  # the supervised phrases, for logs and tests
    key: str = ""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    head_pos: list[int]  # token index of each kept phrase
    kept: list[int]  # which of the given phrase spans were kept (indices)
    dropped: Counter


def tokenize(tokenizer: PreTrainedTokenizerBase, rendered: Rendered,
             video_token_id: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and char offsets of `rendered.text`: one pass, or (`rendered.split_at`) the text before the first
    placeholder with the BOS, the placeholder's id, and the text after it without one, as tokenizer_image_token."""
    cut = rendered.text.find(rendered.split_at) if rendered.split_at else -1
    if cut < 0:
        enc = tokenizer(rendered.text, add_special_tokens=True, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    before = tokenizer(rendered.text[:cut], add_special_tokens=True, return_offsets_mapping=True)
    resume = cut + len(rendered.split_at)
    after = tokenizer(rendered.text[resume:], add_special_tokens=False, return_offsets_mapping=True)
    ids = list(before["input_ids"]) + [video_token_id] + list(after["input_ids"])
    offsets = ([tuple(o) for o in before["offset_mapping"]] + [(cut, resume)]
               + [(s + resume, e + resume) for s, e in after["offset_mapping"]])
    return ids, offsets


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    rendered: Rendered,
    video_token_id: int,
    n_video: int,
    phrase_spans: list[tuple[int, int]],
    max_length: int,
) -> Optional[Encoded]:
    """Tokenise `rendered.text` once; expand the placeholder to `n_video` ids; place labels and phrase tokens.

    `phrase_spans` are [start, end) char spans in `rendered.text`. Returns None when truncation would cut the
    video (the example is unusable); phrases cut by truncation are dropped and counted.
    """
    ids, offsets = tokenize(tokenizer, rendered, video_token_id)
    dropped: Counter = Counter()

    # Answer tokens: those whose last character lies in an answer (incl. its sep2). A token with an empty
    # range (a trimmed space) counts with the character before it.
    in_answer = np.zeros(len(rendered.text) + 1, dtype=bool)
    for start, end in rendered.answer_spans:
        in_answer[start:end] = True
    labels = [tid if end >= 1 and in_answer[end - 1] and not (start == end == 0) else IGNORE_INDEX
              for tid, (start, end) in zip(ids, offsets)]

    # Phrase -> the LAST token whose range covers the phrase's last non-space character.
    positions = []
    for start, end in phrase_spans:
        last = end - 1
        while last >= start and rendered.text[last].isspace():
            last -= 1
        covering = [i for i, (s, e) in enumerate(offsets) if s <= last < e] if last >= start else []
        positions.append(covering[-1] if covering else None)

    video_at = [i for i, tid in enumerate(ids) if tid == video_token_id]
    if len(video_at) != (1 if n_video else 0):
        raise SchemaError(f"conversation has {len(video_at)} video placeholders, expected {1 if n_video else 0}")
    if video_at:
        p, grow = video_at[0], n_video - 1
        ids = ids[:p] + [video_token_id] * n_video + ids[p + 1:]
        labels = labels[:p] + [IGNORE_INDEX] * n_video + labels[p + 1:]
        positions = [None if q is None else (q + grow if q > p else q) for q in positions]
        if p + n_video > max_length:
            return None
    ids, labels = ids[:max_length], labels[:max_length]

    head_pos, kept = [], []
    for i, q in enumerate(positions):
        if q is None:
            dropped["no token"] += 1
        elif q >= len(ids):
            dropped["truncated"] += 1
        else:
            head_pos.append(q)
            kept.append(i)
    return Encoded(ids, labels, head_pos, kept, dropped)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    video_token_id: int,
    query: str,
    n_video: int,
    history: list[tuple[str, str]] = (),
) -> torch.Tensor:
    """Token ids (long, (L,)) of a generation prompt: [history turns] + the query + "ASSISTANT:".

    The video prompt wraps the first user message (the query, when there is no history).
    """
    turns = list(history) + [("user", query)]
    role, message = turns[0]
    turns[0] = (role, first_message(template, message, n_video) if n_video else message)
    enc = encode_conversation(tokenizer, render(template, turns, add_generation_prompt=True), video_token_id,
                              n_video, [], max_length=1 << 30)
    return torch.tensor(enc.input_ids, dtype=torch.long)
