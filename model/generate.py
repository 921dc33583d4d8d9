"""Decoding for PiteModel: greedy or sampled next tokens with a KV cache, and for every generated token both heads'
readout (its trajectory and location), read at the token's own hidden state (`head_shift` 0) or at the state that
produced it (1, the release's). With a time pointer the next-token logits of frame digits get its term, reading
the text states so far (grown every step).

    prompt ids (B, L), left-padded --embed (frames spliced in)--> one cached forward (prefill)
      --> repeat: next-token logits (+ time pointer) -> choose -> feed the token back (one cached step)
      --> hidden states of the generated tokens --read_heads--> (B, n, 2), (B, n, K, T, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from model.sequence import follow, position_ids_from_mask


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens, the stop token excluded
    trajectories: torch.Tensor  # float32 (n, K, T, 2): the trajectory head read for each generated token
    locations: torch.Tensor  # float32 (n, 2): the localisation head, likewise
    text: Optional[str] = None  # decoded (needs a tokenizer)
    token_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each token in `text`


def cache_of(out) -> dict:
    """The KV cache of an LLM output, under the keyword this transformers takes it back: `cache` since 5.2x,
    `past_key_values` in earlier 5.x releases (5.17 among them), whose outputs carry that name instead."""
    if hasattr(out, "cache"):
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


class _Decoding:
    """One batch's decoding state: the KV cache's last output, the mask, the time pointer's reading context."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, video_features):
        self.model, self.b = model, input_ids.size(0)
        embeds, mask, starts = model.embed(input_ids, video_features, attention_mask.long())
        self.mask = mask.long()
        self.out = model.llm(inputs_embeds=embeds, attention_mask=self.mask,
                             position_ids=position_ids_from_mask(self.mask), use_cache=True,
                             output_hidden_states=True, return_dict=True)
        last = self.out.hidden_states[-1]
        self.frames = model.frame_states(model.readout_source(last, embeds), input_ids, starts)
        self.keys = model.time_keys(input_ids, video_features)
        self.every = torch.arange(self.b, device=input_ids.device)
        self.context = None
        if self.keys is not None:  # the text states so far, which the time pointer reads
            expanded = follow(input_ids, starts, self.mask.shape, model.video_token_id)
            self.context = (model._time_context(expanded, embeds, last),
                            self.mask.bool() & (expanded != model.video_token_id), expanded)

    def next_logits(self) -> torch.Tensor:
        """The last position's next-token logits (B, V), with the time pointer's term."""
        logits = self.out.logits[:, -1].float()
        if self.keys is None:
            return logits
        here = torch.full_like(self.every, self.context[0].shape[1] - 1)
        return self.model.with_time_pointer(logits, self.out.hidden_states[-1][:, -1], self.every, here,
                                            self.keys, self.context)

    def feed(self, token: torch.Tensor) -> torch.Tensor:
        """One cached step on the tokens (B,) just chosen; returns their own last hidden states (B, H)."""
        llm = self.model.llm
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.b, 1)], dim=1)
        self.out = llm(inputs_embeds=llm.get_input_embeddings()(token[:, None]), attention_mask=self.mask,
                       position_ids=position_ids_from_mask(self.mask)[:, -1:], **cache_of(self.out),
                       use_cache=True, output_hidden_states=True, return_dict=True)
        state = self.out.hidden_states[-1][:, -1]
        if self.context is not None:
            read, text, ids = self.context
            new = self.model._time_context(token[:, None], llm.get_input_embeddings()(token[:, None]),
                                           state[:, None])[:, 0]
            self.context = (torch.cat([read, new[:, None].to(read.dtype)], dim=1),
                            torch.cat([text, text.new_ones(self.b, 1)], dim=1), torch.cat([ids, token[:, None]], dim=1))
        return state


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    video_features=None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_token_ids: Optional[Sequence[int]] = None,
    tokenizer=None,
    generator: Optional[torch.Generator] = None,
) -> list[Generation]:
    """Greedy (temperature 0) or sampled decoding with a KV cache; per generated token, both heads' readout.

    `input_ids` (L,) or LEFT-padded (B, L) (model.labels.encode_prompt + collate(padding_side="left")).
    Stops at any of `stop_token_ids` (default: the tokenizer's / LLM's eos, i.e. the template's sep2).
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        if isinstance(video_features, torch.Tensor) and video_features.dim() == 2:
            video_features = video_features[None]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not attention_mask[:, -1].bool().all():
        raise ValueError("generate needs left padding: the last position of every row must be a real token")
    if stop_token_ids is None:
        eos = tokenizer.eos_token_id if tokenizer is not None else model.base_llm().config.eos_token_id
        stop_token_ids = eos if isinstance(eos, (list, tuple)) else [eos]
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stops = torch.tensor(list(stop_token_ids), dtype=torch.long, device=input_ids.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run = _Decoding(model, input_ids, attention_mask, video_features)
            ids, length, hidden = _decode(run, max_new_tokens, temperature, top_p, generator, stops)
            rows = torch.arange(run.b, device=hidden.device).repeat_interleave(hidden.shape[1])
            loc, traj = model.read_heads(hidden.reshape(-1, hidden.size(-1)), rows, run.frames)
    finally:
        model.train(was_training)
    loc = loc.view(run.b, -1, 2)
    traj = traj.view(run.b, -1, model.config.n_points, model.config.n_frames, 2)
    results = []
    for i in range(run.b):
        n = int(length[i])
        row = ids[i, :n].tolist()
        if row and row[-1] in stop_token_ids:
            n -= 1
            row = row[:n]
        gen = Generation(token_ids=row, trajectories=traj[i, :n].cpu(), locations=loc[i, :n].cpu())
        if tokenizer is not None:
            gen.text, gen.token_spans = decode_with_spans(tokenizer, row)
        results.append(gen)
    return results


def _decode(run: _Decoding, max_new_tokens: int, temperature: float, top_p: float, generator,
            stops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(generated ids (B, n), each row's length up to and with its stop token (B,), the hidden state each token's
    heads are read at (B, n, H))."""
    # before[j]: the hidden state that produced token j (head_shift 1, the release); at[j]: token j's own.
    before, at, tokens = [run.out.hidden_states[-1][:, -1]], [], []
    done = torch.zeros(run.b, dtype=torch.bool, device=stops.device)
    length = torch.zeros(run.b, dtype=torch.long, device=stops.device)
    for step in range(max_new_tokens):
        nxt = sample_next(run.next_logits(), temperature, top_p, generator)
        tokens.append(nxt)
        length += (~done).long()
        done |= torch.isin(nxt, stops)
        if done.all() or step == max_new_tokens - 1:
            break
        at.append(run.feed(nxt))
        before.append(at[-1])
    if run.model.config.head_shift == 0:
        # The last token was never fed back. Its own hidden state needs one more step, unless every row that
        # reached it stopped there (stop tokens get no readout): then a placeholder will do.
        reached = length == len(tokens)
        if bool((reached & ~torch.isin(tokens[-1], stops)).any()):
            at.append(run.feed(tokens[-1]))
        else:
            at.append(torch.zeros_like(before[0]))
        hidden = torch.stack(at, dim=1)
    else:
        hidden = torch.stack(before[: len(tokens)], dim=1)
    return torch.stack(tokens, dim=1), length, hidden


def decode_with_spans(tokenizer, token_ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text and each token's [start, end) in it (a token inside a multi-byte character gets an empty span
    at the character's start; the token completing it covers it)."""
    spans, prev = [], 0
    for i in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: i + 1])
        if text.endswith("\ufffd") and i + 1 < len(token_ids):
            spans.append((prev, prev))
            continue
        end = max(prev, len(text))
        spans.append((prev, end))
        prev = end
    return tokenizer.decode(token_ids), spans


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """The next token of each row: the argmax at temperature 0, else a draw from the top-p nucleus."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
