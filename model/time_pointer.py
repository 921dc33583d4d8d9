"""Time pointer: the frame numbers of an answer ("From 23 to 41.") read by pointing at frames.

Temporal grounding asks a model to write frame indices (VTimeLLM's protocol: 100 frames, two-digit numbers). A
7B LLM learns to copy a frame's index from where its attention lands; the tiny CPU demo LLM did not. Measured on
the demo (stage 3, 250 steps and a grounding-only run of 500): teacher-forced P(correct tens digit) stayed ~0.12,
chance being 0.1, and every held-out answer was nearly the same span (R1@0.5 9.7 against 12.9 for the training
set's mean span). It has to do two things at once, find the frames where the event happens and turn their position
into digit tokens, and with RoPE and a clock term in the tokens it learned neither from ~130 training events.

The time pointer splits the two, the way pointer networks copy from their input (Vinyals et al. 2015; See et al.
2017's pointer-generator) and timestamp heads of video LLMs do (TRACE's separate time head):

    query  q = Attention(from h, the LLM's last hidden state here, over the text before it, recent words first:
                         the question's words; `time_pointer_reads`: their hidden states, input embeddings, or
                         word vectors of the pointer's own)
    keys   k[t, s] = slot_embedding[s] + TemporalConv(the colour slot's keypoint, mass and their frame-to-frame
                     change over a window of frames around t)        (the adapter's keypoints, model/adapters.py)
    p(t)         = sum_s softmax_{t,s}(q . k[t, s] / sqrt(d))
    P(number m)  = sum_t p(t) * share of frame t's time span in m's   (n = 100 frames: number m = frame m)
    next-token logits += log(10 P(tens digit = d)) on the tokens that write a tens digit, or, right after one,
                         log(10 P(units digit = u | d)) on the tokens that write a units digit
    and where it writes the end of a span ("From 45 to _"), P is renormalised over the numbers >= the start

`time_pointer_mix` says how the pointer meets the LM on the digits. product: a product of the two distributions
(the LM's logits decide whether a digit comes at all, and still vote on which). replace: the pointer-generator split
(See et al. 2017): the digit tokens share the LM's total probability of a digit in the pointer's proportions, so
the LM says only that a digit comes and learns nothing about which. The demo uses replace: on its 64 held-out clips
R1@0.5 32.2 and mIoU 31.4, against 24.8 and 27.4 with product (same data, seed and steps).

The query starts at zero, so p is uniform: with product the term is 0 but for the span rule, and a model without a
trained pointer (or a checkpoint saved before it existed) writes what it wrote before, except that a span's end
cannot go below its start. The conv sees a window of frames because events are changes: a stop is "moving, then
still", an entry "absent, then present" at the slot of the named colour. Tokens come from the tokenizer
(`time_token_ids`): any that writes "NN" as a tens-digit token then a units-digit token (ours, " 2" then "3";
LLaMA's, digit by digit, works too).

Only the demo's colour-slot adapter has the per-slot keypoints it points with: a released (linear-adapter)
checkpoint never has a time pointer. It learns its task on a toy (tests/test_model_time_pointer.py: the frame a named
square enters, 20 of 20 unseen clips, with either mix). On the demo it needed clips enough that a question's phrase
does not name its clip: trained alone with the question read from its words, it reached held-out R1@0.5 0.44 from
256 training clips and 0.18 from 64, where it learned each clip by heart (README, "The demo model").
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from annotate.errors import ConfigError
from model.conversation import format_span
from model.sequence import stack_frames

DIGITS = 10
N_NUMBERS = 100  # VTimeLLM's frame indices 00..99
DESCRIPTORS = 7  # per slot and frame: x, y, mass, dx, dy, |dxy|, dmass


def time_token_ids(tokenizer) -> list[list[int]]:
    """[[tens-digit token of 0..9], [units-digit token of 0..9]] of `tokenizer`, read off how it writes every
    "From NN to NN." answer; a ConfigError when it does not write NN as exactly those two tokens."""
    tens: list[set[int]] = [set() for _ in range(DIGITS)]
    units: list[set[int]] = [set() for _ in range(DIGITS)]
    for n in range(N_NUMBERS):
        text = format_span(n, n)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        at = text.index(f"{n:02d}")
        digits = [tid for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if s < at + 2 and e > at]
        if len(digits) != 2:
            raise ConfigError(f"model.time_pointer: the tokenizer writes {n:02d} in {text!r} as {len(digits)} "
                              "token(s) over its digits, not one per digit")
        tens[n // 10].add(digits[0])
        units[n % 10].add(digits[1])
    for name, group in (("tens", tens), ("units", units)):
        if any(len(ids) != 1 for ids in group) or len({next(iter(ids)) for ids in group}) != DIGITS:
            raise ConfigError(f"model.time_pointer: the tokenizer's {name} digits are not 10 distinct tokens")
    return [[next(iter(ids)) for ids in tens], [next(iter(ids)) for ids in units]]


def _descriptors(keypoints: torch.Tensor) -> torch.Tensor:
    """(n, S, 3) x, y in [-1, 1] and log-mass per frame and slot -> (n, S, 7) with their changes from the frame
    before (0 at the first), squashed by tanh: a move of 1 px per frame of a 256 px frame gives 0.37, a stop
    (< 0.15 px) under 0.06, while the jump of a colour that appears (its keypoint leaps, its mass rises by ~7)
    saturates instead of swamping the convolution."""
    change = torch.cat([torch.zeros_like(keypoints[:1]), keypoints[1:] - keypoints[:-1]])
    dxy = change[..., :2] * 50.0
    speed = dxy.norm(dim=-1, keepdim=True)
    return torch.cat([keypoints, torch.tanh(dxy), torch.tanh(speed), torch.tanh(change[..., 2:])], dim=-1)


def frame_to_numbers(n: int, device=None) -> torch.Tensor:
    """(n, 100): the share of frame j's time span [j/n, (j+1)/n) that falls in number m's [m/100, (m+1)/100).
    Rows sum to 1, so a uniform pointer gives uniform numbers (with n = 100, the identity)."""
    frames = torch.arange(n + 1, dtype=torch.float64, device=device) / n
    numbers = torch.arange(N_NUMBERS + 1, dtype=torch.float64, device=device) / N_NUMBERS
    lo = torch.maximum(frames[:-1, None], numbers[None, :-1])
    hi = torch.minimum(frames[1:, None], numbers[None, 1:])
    return ((hi - lo).clamp(min=0) * n).float()


class TimePointer(nn.Module):
    def __init__(self, hidden: int, slots: int, tokens: list[list[int]], dim: int = 64, kernel: int = 9,
                 heads: int = 4, vocab: int = 0, device=None):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.time_pointer_dim: {dim} is not a multiple of its {heads} heads")
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"model.time_pointer_kernel: expected an odd number >= 1, got {kernel}")
        self.dim = dim
        # The query is what an attention of its own reads of the text before it (the question: which colour,
        # which event). Not Linear(h) of the state where the number starts: in the tiny demo LLM that state did
        # not carry the question's words (a toy with two colours entering at different frames: the pointer picked
        # either, 10 of 20 right), and on the demo it let the pointer memorise training clips.
        self.heads = heads
        # `vocab` > 0: word vectors of its own to read (model.time_pointer_reads: words), a bag of words that the
        # LLM's training cannot move under it.
        self.words = nn.Embedding(vocab, dim, device=device) if vocab else None
        width = dim if vocab else hidden
        self.read_q = nn.Linear(hidden, dim, device=device)
        self.read_k = nn.Linear(width, dim, device=device)
        self.read_v = nn.Linear(width, dim, device=device)
        self.read_out = nn.Linear(dim, dim, device=device)
        nn.init.zeros_(self.read_out.weight)  # a uniform pointer at first: the term is 0 (the module's docstring)
        nn.init.zeros_(self.read_out.bias)
        # ALiBi-style recency (Press et al. 2022), one slope per head, learned: the read has no positions of its own,
        # and in a conversation of several questions the one just asked is the one the number answers.
        # With read_q at zero the read starts as pure recency pooling, a bag of the words just before (slopes from
        # 0.02 to 0.3 per token: the last ~50 to ~3 tokens), which a linear map turns into a query as easily as a
        # one-hot bag of words would; attention by content grows from there.
        self.recency = nn.Parameter(torch.logspace(math.log10(0.02), math.log10(0.3), heads, device=device))
        nn.init.zeros_(self.read_q.weight)
        nn.init.zeros_(self.read_q.bias)
        self.slot = nn.Parameter(torch.randn(slots, dim, device=device) * 0.5)
        pad = kernel // 2
        self.conv = nn.Sequential(
            nn.Conv1d(DESCRIPTORS, dim, kernel, padding=pad, padding_mode="replicate", device=device),
            nn.GELU(),
            nn.Conv1d(dim, dim, kernel, padding=pad, padding_mode="replicate", device=device),
        )
        tens, units = (torch.tensor(ids, dtype=torch.long, device=device) for ids in tokens)
        self.register_buffer("tens_ids", tens, persistent=False)
        self.register_buffer("units_ids", units, persistent=False)

    def keys(self, keypoints: torch.Tensor) -> torch.Tensor:
        """(n, S, 3) one clip's slot keypoints -> keys (n, S, d)."""
        feats = _descriptors(keypoints.float()).permute(1, 2, 0)  # (S, 7, n): each slot a sequence over time
        return self.conv(feats).permute(2, 0, 1) + self.slot[None]

    def queries(self, hidden: torch.Tensor, context: Optional[torch.Tensor] = None,
                distance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, H) states -> (M, d) pointer queries: what an attention from h reads of `context` (C, width), the
        text of its row; `distance` (M, C): how many text tokens back each context token lies from each state
        (negative: after it, masked out; every state has at least itself at 0)."""
        hidden = hidden.float()
        if context is None:  # nothing to read: a zero vector
            context = hidden.new_zeros(1, self.read_k.in_features)
            distance = torch.zeros(hidden.shape[0], 1, dtype=torch.long, device=hidden.device)
        m, c, h = hidden.shape[0], context.shape[0], self.heads
        context = context.float()
        rq = self.read_q(hidden).view(m, h, -1)
        rk, rv = self.read_k(context).view(c, h, -1), self.read_v(context).view(c, h, -1)
        scores = torch.einsum("mhd,chd->mhc", rq, rk) / math.sqrt(rq.shape[-1])
        if distance is not None:
            scores = scores - self.recency.clamp(min=0)[None, :, None] * distance.clamp(min=0)[:, None, :].float()
            scores = scores.masked_fill((distance < 0)[:, None, :], float("-inf"))
        read = torch.einsum("mhc,chd->mhd", torch.softmax(scores, dim=-1).nan_to_num(0.0), rv).reshape(m, -1)
        return self.read_out(read)

    def numbers(self, hidden: torch.Tensor, keys: torch.Tensor, context: Optional[torch.Tensor] = None,
                distance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, H) states and one clip's keys (n, S, d) -> (M, 100) probabilities of each frame index 00..99."""
        q = self.queries(hidden, context, distance)
        n = keys.shape[0]
        scores = torch.einsum("md,nsd->mns", q, keys).flatten(1) / math.sqrt(self.dim)
        p = torch.softmax(scores, dim=-1).view(-1, n, keys.shape[1]).sum(-1)  # (M, n)
        return p @ frame_to_numbers(n, p.device)

    def span_floor(self, recent: torch.Tensor) -> torch.Tensor:
        """(M, W) the last W input tokens of each state (the state's own last; -1 = none) -> (M,) the number a span
        started with when the state writes its end ("From 45 to" -> 45), else -1: the last tens-units digit pair
        before the state's own token, followed by at most 3 tokens none of which is a digit (the state's own
        token may be the end's tens digit)."""
        tens = torch.isin(recent, self.tens_ids)
        units = torch.isin(recent, self.units_ids)
        digit = tens | units
        floor = torch.full((recent.shape[0],), -1, dtype=torch.long, device=recent.device)
        w = recent.shape[1]
        for j in range(w - 3, max(-1, w - 6), -1):  # the pair (j, j+1) ends 1 to 3 tokens before the state's own
            pair = tens[:, j] & units[:, j + 1] & (floor < 0)
            after = digit[:, j + 2: w - 1].any(-1) if j + 2 < w - 1 else torch.zeros_like(pair)
            ok = pair & ~after
            if bool(ok.any()):
                d = (recent[ok, j, None] == self.tens_ids[None]).float().argmax(-1)
                u = (recent[ok, j + 1, None] == self.units_ids[None]).float().argmax(-1)
                floor[ok] = d * DIGITS + u
        return floor

    def digit_probs(self, hidden: torch.Tensor, input_ids: torch.Tensor, keys: torch.Tensor,
                    context: Optional[torch.Tensor] = None, distance: Optional[torch.Tensor] = None,
                    floor: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """For states `hidden` (M, H) whose input tokens are `input_ids` (M,), and one clip's `keys`: the digit
        tokens each state may write (M, 10), a units digit right after a tens digit, else a tens digit, and the
        pointer's probabilities of them (M, 10). `floor` (M,): a span's start number where the state writes its
        end (`span_floor`), -1 elsewhere: the end is not pointed before the start."""
        numbers = self.numbers(hidden, keys, context, distance)
        if floor is not None and bool((floor >= 0).any()):
            below = torch.arange(N_NUMBERS, device=numbers.device)[None] < floor[:, None]
            kept = numbers.masked_fill(below, 0.0)
            mass = kept.sum(-1, keepdim=True)
            numbers = torch.where(mass > 1e-9, kept / mass.clamp(min=1e-12), numbers)
        numbers = numbers.view(-1, DIGITS, DIGITS)  # (M, tens, units)
        after_tens = input_ids[:, None] == self.tens_ids[None]  # (M, 10): which tens digit was just written
        is_units = after_tens.any(-1)
        d = after_tens.float().argmax(-1)
        units = numbers[torch.arange(numbers.shape[0], device=numbers.device), d]  # (M, 10) joint P(d, u)
        units = units / units.sum(-1, keepdim=True).clamp(min=1e-12)
        probs = torch.where(is_units[:, None], units, numbers.sum(-1))
        group = torch.where(is_units[:, None], self.units_ids[None], self.tens_ids[None])
        return group, probs

    def logit_bias(self, hidden: torch.Tensor, input_ids: torch.Tensor, keys: torch.Tensor, vocab: int,
                   context: Optional[torch.Tensor] = None, distance: Optional[torch.Tensor] = None,
                   floor: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, vocab) additions to the next-token logits (`digit_probs`' arguments): log(10 P) on each state's
        digit tokens, 0 elsewhere, so a uniform pointer adds nothing."""
        group, probs = self.digit_probs(hidden, input_ids, keys, context, distance, floor)
        bias = hidden.new_zeros(hidden.shape[0], vocab, dtype=torch.float32)
        return bias.scatter(1, group, torch.log(DIGITS * probs + 1e-6))

    def mix(self, logits: torch.Tensor, hidden: torch.Tensor, input_ids: torch.Tensor, keys: torch.Tensor,
            context: Optional[torch.Tensor] = None, distance: Optional[torch.Tensor] = None,
            floor: Optional[torch.Tensor] = None, replace: bool = False) -> torch.Tensor:
        """The next-token logits (M, V) with the pointer's say on the digits (`digit_probs`' arguments).
        product: logits + logit_bias. replace: the pointer-generator split (See et al. 2017): the digit tokens
        of the state's group (tens or units) share the LM's total probability of a digit, in the pointer's
        proportions, so the LM decides only whether a digit comes and gets no gradient for which one."""
        if not replace:
            return logits + self.logit_bias(hidden, input_ids, keys, logits.shape[-1], context, distance, floor)
        group, probs = self.digit_probs(hidden, input_ids, keys, context, distance, floor)
        lm_digit = torch.logsumexp(logits.gather(1, group), dim=-1, keepdim=True)
        return logits.scatter(1, group, lm_digit + torch.log(probs + 1e-7))


def attach_time_tokens(config, tokenizer) -> None:
    """Fill config.time_token_ids from `tokenizer` when the time pointer is on (they are saved with the config)."""
    if config.time_pointer:
        config.time_token_ids = time_token_ids(tokenizer)


# --- the glue to PiteModel: keys per clip, what the pointer reads, and its term added to the logits ---------------


def pointer_keys(model, input_ids: torch.Tensor, video_features) -> list[Optional[torch.Tensor]]:
    """The time pointer's keys of each row's clip ((n, S, d), None for a row with fewer than 2 frames)."""
    is_video = input_ids == model.video_token_id
    frames = stack_frames(video_features, is_video)
    out: list[Optional[torch.Tensor]] = [None] * input_ids.shape[0]
    if frames is None:
        return out
    ref = model.localization_projector.weight
    with torch.autocast(device_type=ref.device.type, enabled=False):
        keypoints = model.vision_adapter.keypoints(frames.to(ref.dtype))
        first = 0
        for b, n in enumerate(is_video.sum(dim=1).tolist()):
            if n >= 2:
                out[b] = model.time_pointer.keys(keypoints[first:first + n])
            first += n
    return out


def pointer_context(model, token_ids: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """What the time pointer reads at each position (model.time_pointer_reads)."""
    reads = model.config.time_pointer_reads
    if reads == "words":  # video positions are never read; their id may lie outside the table
        return model.time_pointer.words(token_ids.masked_fill(token_ids == model.video_token_id, 0))
    return embeds if reads == "embeddings" else hidden


def add_pointer_term(model, logits: torch.Tensor, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                     keys: list, context: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token logits (M, V) of states `hidden` (M, H) plus the time pointer's term, for rows with a clip. Per
    state: its batch row `rows` (M,) and position `positions` (M,); `context` = (what the pointer reads (B, C, H),
    which positions are text (B, C), the token ids (B, C), video positions holding the video id): the pointer
    reads the text at or before each state."""
    out = logits.float().clone()
    states, is_text, ids = context
    window = torch.arange(-5, 1, device=ids.device)  # the state's own token and the 5 before it
    at = positions[:, None] + window[None]
    recent = torch.where(at >= 0, ids[rows[:, None], at.clamp(min=0)], -1)
    token_ids = recent[:, -1]
    pointer = model.time_pointer
    floor = pointer.span_floor(recent)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        for b in torch.unique(rows).tolist():
            if keys[b] is None:
                continue
            pick = rows == b
            text = is_text[b]
            rank = is_text[b].long().cumsum(0) - 1  # each position's index among the row's text tokens
            distance = rank[positions[pick]][:, None] - rank[text][None]  # text tokens back (< 0: ahead)
            out[pick] = pointer.mix(out[pick], hidden[pick], token_ids[pick], keys[b], states[b, text], distance,
                                    floor[pick], replace=model.config.time_pointer_mix == "replace")
    return out
