"""From an annotated sample to training examples: the conversation, its token ids, LM labels and head targets.

A phrase's char span in the caption, shifted by where the caption sits in the conversation, finds its token through
model/encoding.py (the readout rule: a phrase is supervised at its last token). The `<video>` placeholder becomes
one position per frame (the model splices the adapted frame features there).

Stage 1: one example per grounding frame: that frame alone is the visual input (T = 1) and each phrase grounded
there is supervised with its points' mean (localisation head). Options: a random frame with visible objects
instead (`stage1_frames: random`), and one example per object answering with its phrase alone
(`stage1_text: phrase`). Stage 2: the clip (T frames) and each phrase's
trajectories (trajectory head). Stage 3: conversations from the sample's `events` (dense captions, temporal
grounding with VTimeLLM's frame indices) and `conversations`, after the caption turn.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from annotate.errors import SchemaError
from model.config import LabelConfig
from model.conversation import Template, first_message, format_span, frame_index, render
from model.encoding import IGNORE_INDEX, Encoded, Example, encode_conversation, encode_prompt, tokenize

__all__ = ["IGNORE_INDEX", "Encoded", "Example", "build_examples", "encode_conversation", "encode_prompt", "tokenize"]



def _parts(sample: Any) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(meta, traj, vis, feat) from a dict {"meta"|"json", "traj", "vis", "feat"} or an object with those fields."""
    get = sample.get if isinstance(sample, dict) else (lambda name, default=None: getattr(sample, name, default))
    meta = get("meta", None)
    if meta is None:
        meta = get("json", None)
    if not isinstance(meta, dict):
        raise SchemaError("sample: no meta dict (KEY.json)")
    key = meta.get("video_id", "?")
    traj, vis, feat = (get(name, None) for name in ("traj", "vis", "feat"))
    if feat is None:
        raise SchemaError(f"sample {key}: no feat array")
    feat = np.asarray(feat)
    if feat.ndim != 2:
        raise SchemaError(f"sample {key}: feat has shape {feat.shape}, expected (T, D)")
    n = len(meta.get("objects") or [])
    if traj is None or vis is None:
        if n:
            raise SchemaError(f"sample {key}: {n} objects but no traj/vis arrays")
        traj, vis = np.zeros((0, 0, feat.shape[0], 2), np.float32), np.zeros((0, 0, feat.shape[0]), bool)
    traj, vis = np.asarray(traj, dtype=np.float32), np.asarray(vis, dtype=bool)
    if traj.ndim != 4 or traj.shape[0] != n or traj.shape[-1] != 2 or vis.shape != traj.shape[:3]:
        raise SchemaError(f"sample {key}: traj {traj.shape} / vis {vis.shape} do not match {n} objects as (N, K, T, 2)")
    return meta, traj, vis, feat


def _choose(options: list[str], rng: Optional[random.Random]) -> str:
    return rng.choice(options) if rng is not None else options[0]


def _check_text(text: str, template: Template, key: str, what: str) -> None:
    for reserved in (template.video_token, template.sep2):
        if reserved in text:
            raise SchemaError(f"sample {key}: {what} contains the reserved token {reserved!r}")


def _caption_answer(meta: dict, template: Template, key: str) -> tuple[str, int]:
    """The caption as an answer (stripped) and how far its spans shift (the stripped leading characters)."""
    caption = meta.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise SchemaError(f"sample {key}: caption is missing or empty")
    _check_text(caption, template, key, "caption")
    return caption.strip(), len(caption) - len(caption.lstrip())


def _object_spans(meta: dict, indices: list[int], answer: str, lead: int, key: str, dropped: Counter):
    """Char spans in the answer of the objects at `indices` (those outside it are dropped)."""
    spans, keep = [], []
    for i in indices:
        span = meta["objects"][i].get("char_span")
        if not (isinstance(span, (list, tuple)) and len(span) == 2):
            raise SchemaError(f"sample {key}: objects[{i}].char_span is not [start, end)")
        start, end = int(span[0]) - lead, int(span[1]) - lead
        if not 0 <= start < end <= len(answer):
            dropped["outside caption"] += 1
            continue
        spans.append((start, end))
        keep.append(i)
    return spans, keep


def _conversation_turns(meta: dict, template: Template, key: str) -> tuple[list[tuple[str, str]], str]:
    """The sample's converted instruction turns ({from, value}), the first one's image/video placeholder removed,
    and that first message with its own prompt ("<video>\n..." in VTimeLLM's data; "" when it has none), which
    opens the conversation as written instead of the template's video prompt."""
    turns, own = [], ""
    for i, turn in enumerate(meta.get("conversations") or []):
        who, value = turn.get("from"), turn.get("value")
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(who)
        if role is None or not isinstance(value, str):
            raise SchemaError(f"sample {key}: conversations[{i}] has from={who!r}, expected human/gpt with a value")
        if i == 0:
            if "<video>" in value or "<image>" in value:
                own = value.replace("<image>", "<video>").replace("<video>", template.video_token, 1).strip()
            for placeholder in ("<video>", "<image>"):
                value = value.replace(placeholder + "\n", "").replace("\n" + placeholder, "").replace(placeholder, "")
            value = value.strip()
        _check_text(value, template, key, f"conversations[{i}]")
        turns.append((role, value))
    if turns and turns[-1][0] == "user":
        turns = turns[:-1]  # a question without its answer teaches nothing
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise SchemaError(f"sample {key}: conversations do not alternate human/gpt at turn {i}")
    if own and own.count(template.video_token) != 1:
        raise SchemaError(f"sample {key}: conversations[0] holds more than one video/image placeholder")
    return turns, own


def _event_turns(meta: dict, cfg: LabelConfig, key: str, rng: Optional[random.Random]) -> list[tuple[str, str]]:
    """VTimeLLM-style turns from timed captions: one dense-caption turn, then temporal-grounding questions."""
    duration = meta.get("duration")
    events = []
    for i, ev in enumerate(meta.get("events") or []):
        try:
            start, end, text = float(ev["start"]), float(ev["end"]), str(ev["text"]).strip().rstrip(".").strip()
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"sample {key}: events[{i}] is not {{start, end, text}} ({exc})") from exc
        if text:
            events.append((start, end, text))
    if not events:
        return []
    if not isinstance(duration, (int, float)) or duration <= 0:
        raise SchemaError(f"sample {key}: events need a positive duration, got {duration!r}")
    events.sort(key=lambda e: (e[0], e[1]))
    spans = [(frame_index(s, duration), frame_index(e, duration), text) for s, e, text in events]
    dense = " ".join(f"From {s:02d} to {e:02d}, {text}." for s, e, text in spans)
    turns = [("user", cfg.dense_query), ("assistant", dense)]
    chosen = list(range(len(spans)))
    if len(chosen) > cfg.max_grounding_turns:
        chosen = sorted(rng.sample(chosen, cfg.max_grounding_turns)) if rng else chosen[: cfg.max_grounding_turns]
    for i in chosen:
        s, e, text = spans[i]
        turns += [("user", cfg.grounding_query.format(query=text)), ("assistant", format_span(s, e))]
    return turns


def _example(enc: Encoded, video: Optional[np.ndarray], n_points: int, n_frames: int, key: str,
             phrases: list[str], loc: Optional[np.ndarray] = None, traj: Optional[np.ndarray] = None,
             vis: Optional[np.ndarray] = None) -> Example:
    p = len(enc.kept)
    loc_target, loc_mask = torch.zeros(p, 2), torch.zeros(p, dtype=torch.bool)
    traj_target, traj_mask = torch.zeros(p, n_points, n_frames, 2), torch.zeros(p, n_points, n_frames, dtype=torch.bool)
    if loc is not None:
        loc_target, loc_mask = torch.from_numpy(loc[enc.kept]), torch.ones(p, dtype=torch.bool)
    if traj is not None:
        traj_target, traj_mask = torch.from_numpy(traj[enc.kept]), torch.from_numpy(vis[enc.kept])
    return Example(
        input_ids=torch.tensor(enc.input_ids, dtype=torch.long),
        labels=torch.tensor(enc.labels, dtype=torch.long),
        video=None if video is None else torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32)),
        head_pos=torch.tensor(enc.head_pos, dtype=torch.long),
        loc_target=loc_target.float(),
        loc_mask=loc_mask,
        traj_target=traj_target.float(),
        traj_mask=traj_mask,
        phrases=[phrases[i] for i in enc.kept],
        key=key,
    )


def build_examples(
    sample: Any,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    video_token_id: int,
    cfg: LabelConfig,
    rng: Optional[random.Random] = None,
) -> tuple[list[Example], Counter]:
    """Training examples of one sample for `cfg.stage`, and the count of what was dropped (by reason).

    `rng` picks the query wording, the grounding questions and (stage3_order shuffle) the order of the questions;
    None takes the first of each in the listed order (deterministic).
    Bad samples raise SchemaError naming the video_id and the field.
    """
    meta, traj, vis, feat = _parts(sample)
    key = str(meta.get("video_id", "?"))
    n_obj = traj.shape[0]
    dropped: Counter = Counter()
    examples: list[Example] = []

    if cfg.stage in (1, 2) and n_obj == 0:
        dropped["sample without objects"] += 1
        return examples, dropped

    if cfg.stage == 1:
        return _stage1_examples(meta, traj, vis, feat, key, tokenizer, template, video_token_id, cfg, rng, dropped)
    plan = _clip_plan(meta, traj, vis, key, template, cfg, rng, dropped)
    if plan is None:
        return examples, dropped
    return _clip_examples(plan, meta, traj, vis, feat, key, tokenizer, template, video_token_id, cfg, rng, dropped)


def _stage1_examples(meta: dict, traj, vis, feat, key: str, tokenizer, template: Template, video_token_id: int,
                     cfg: LabelConfig, rng: Optional[random.Random], dropped: Counter) -> tuple[list[Example], Counter]:
    """Stage 1: one example per grounding frame (that frame alone), each phrase with its points' mean."""
    n_obj, k, t = traj.shape[0], traj.shape[1], traj.shape[2]
    examples: list[Example] = []
    answer, lead = _caption_answer(meta, template, key)
    by_frame: dict[int, list[int]] = {}
    for i, obj in enumerate(meta["objects"]):
        f = obj.get("frame")
        if not isinstance(f, int) or not 0 <= f < min(t, feat.shape[0]):
            raise SchemaError(f"sample {key}: objects[{i}].frame {f!r} is not an index into the {t} samples")
        if vis[i, :, f].any():
            by_frame.setdefault(f, []).append(i)
        else:
            dropped["not visible"] += 1
    if cfg.stage1_frames == "random" and rng is not None:
        shown = np.flatnonzero(vis[:, :, : min(t, feat.shape[0])].any(axis=(0, 1)))
        if len(shown):
            f = int(shown[rng.randrange(len(shown))])
            by_frame = {f: [i for i in range(n_obj) if vis[i, :, f].any()]}
    units = []  # (frame, answer, spans in it, object indices)
    for f, members in sorted(by_frame.items()):
        spans, keep = _object_spans(meta, members, answer, lead, key, dropped)
        if cfg.stage1_text == "caption":
            units.append((f, answer, spans, keep))
            continue
        for (s, e), i in zip(spans, keep):  # the phrase as the caption has it, a full stop after it
            units.append((f, answer[s:e] + ".", [(0, e - s)], [i]))
    for f, text, spans, keep in units:
        turns = [("user", first_message(template, _choose(cfg.image_queries, rng), 1)), ("assistant", text)]
        rendered = render(template, turns)
        shift = rendered.message_spans[1][0]
        enc = encode_conversation(tokenizer, rendered, video_token_id, 1,
                                  [(s + shift, e + shift) for s, e in spans], cfg.max_length)
        if enc is None:
            dropped["video truncated"] += 1
            continue
        dropped.update(enc.dropped)
        loc = np.zeros((len(keep), 2), np.float32)
        for j, i in enumerate(keep):
            loc[j] = traj[i, vis[i, :, f], f].mean(axis=0)
        phrases = [meta["objects"][i].get("phrase", "") for i in keep]
        examples.append(_example(enc, feat[f:f + 1], k, t, key, phrases, loc=loc))
    return examples, dropped


@dataclass
class _ClipPlan:
    """Stages 2 and 3: the blocks of turns of each example to build, the caption turn's phrase spans and objects."""

    caption: Optional[list[tuple[str, str]]]
    spans: list[tuple[int, int]]
    keep: list[int]
    groups: list[list[list[tuple[str, str]]]]
    conversation: list[tuple[str, str]]
    own_prompt: str


def _clip_plan(meta: dict, traj, vis, key: str, template: Template, cfg: LabelConfig,
               rng: Optional[random.Random], dropped: Counter) -> Optional[_ClipPlan]:
    """What the examples of a whole clip hold (None: nothing to train on in this stage)."""
    n_obj = traj.shape[0]
    # The whole clip; the caption turn carries the trajectory targets. Blocks of turns that stay
    # together: the caption pair, a converted conversation (its follow-ups refer back), the dense-caption pair,
    # each grounding pair.
    caption: Optional[list[tuple[str, str]]] = None
    spans: list[tuple[int, int]] = []
    keep: list[int] = []
    if n_obj > 0 and (cfg.stage == 2 or (cfg.caption_turn_in_stage3 and not cfg.stage3_grounding_only)):
        answer, lead = _caption_answer(meta, template, key)
        visible = [i for i in range(n_obj) if vis[i].any()]
        if len(visible) < n_obj:
            dropped["not visible"] += n_obj - len(visible)
        spans, keep = _object_spans(meta, visible, answer, lead, key, dropped)
        caption = [("user", _choose(cfg.caption_queries, rng)), ("assistant", answer)]
    others: list[list[tuple[str, str]]] = []  # blocks without trajectory targets
    grounding: list[list[tuple[str, str]]] = []
    conversation, own_prompt = [], ""
    if cfg.stage == 3:
        conversation, own_prompt = _conversation_turns(meta, template, key)
        events = _event_turns(meta, cfg, key, rng)
        if conversation:
            others.append(conversation)
        if events:
            others.append(events[:2])  # the dense-caption pair
        grounding = [events[i:i + 2] for i in range(2, len(events), 2)]
    # stage3_split: the grounding questions make an example of their own, so that their answers cannot be copied
    # from the dense captions ("From 12 to 40, the red ball stops.") of the same conversation.
    groups = [others + ([] if cfg.stage3_split else grounding)]
    if cfg.stage3_split and grounding:
        groups.append(grounding)
    if cfg.stage == 3 and cfg.stage3_grounding_only:
        groups = [grounding]
    if caption is None and not any(groups):
        dropped["sample without stage-3 data"] += 1
        return None
    return _ClipPlan(caption, spans, keep, groups, conversation, own_prompt)


def _clip_examples(plan: _ClipPlan, meta: dict, traj, vis, feat, key: str, tokenizer, template: Template,
                   video_token_id: int, cfg: LabelConfig, rng: Optional[random.Random],
                   dropped: Counter) -> tuple[list[Example], Counter]:
    """Stages 2 and 3: one example per group of blocks, the caption (and its trajectory targets) in the first."""
    k, t = traj.shape[1], traj.shape[2]
    caption, spans, keep, conversation, own_prompt = (plan.caption, plan.spans, plan.keep, plan.conversation,
                                                       plan.own_prompt)
    examples: list[Example] = []
    phrases = [obj.get("phrase", "") for obj in meta.get("objects") or []]
    for g, blocks in enumerate(plan.groups):
        with_caption = caption is not None and g == 0  # the caption (and its targets) goes with the first
        blocks = ([caption] if with_caption else []) + blocks
        if not blocks:
            continue
        order = list(range(len(blocks)))
        if cfg.stage == 3 and cfg.stage3_order == "shuffle" and rng is not None:
            rng.shuffle(order)
        turns = [turn for i in order for turn in blocks[i]]
        caption_at = None  # message index of the caption answer (its spans are relative to it)
        if with_caption:
            caption_at = sum(len(blocks[i]) for i in order[: order.index(0)]) + 1
        opens_conversation = conversation and blocks[order[0]] is conversation and own_prompt
        turns[0] = ("user", own_prompt if opens_conversation else first_message(template, turns[0][1], feat.shape[0]))
        rendered = render(template, turns)
        shift = rendered.message_spans[caption_at][0] if caption_at is not None else 0
        these = spans if with_caption else []
        enc = encode_conversation(tokenizer, rendered, video_token_id, feat.shape[0],
                                  [(s + shift, e + shift) for s, e in these], cfg.max_length)
        if enc is None:
            dropped["video truncated"] += 1
            continue
        dropped.update(enc.dropped)
        enc.kept = [keep[j] for j in enc.kept]  # back to object indices
        examples.append(_example(enc, feat, k, t, key, phrases, traj=traj, vis=vis))
    return examples, dropped
