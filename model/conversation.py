"""The Vicuna v1 conversation template (LLaVA's conv "v1", the release's) and VTimeLLM's frame-index timestamps.

A rendered conversation reads
    "{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
and a generation prompt ends with "ASSISTANT:". `render` also returns where every message and every answer
(with its closing sep2) sits in the text, so labels can be placed by character offsets.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from annotate.errors import ConfigError

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    name: str = "release"
    system: str = VICUNA_SYSTEM
    user: str = "USER"
    assistant: str = "ASSISTANT"
    sep: str = " "  # after the system prompt and after each user message
    sep2: str = "</s>"  # after each assistant message (the eos)
    video_token: str = "<video>"
    # First user message: a clip (T frames) and a single frame (stage 1). {query} is the user's question.
    video_prompt: str = "<video>\n{query}"
    image_prompt: str = "<video>\n{query}"
    # Tokenise the text before and after the placeholder separately, as LLaVA's and VTimeLLM's
    # `tokenizer_image_token` (and so the PiTe release) do. With a sentencepiece (LLaMA) tokenizer the text after
    # the video then starts with the dummy-prefix token "▁" that one pass over the whole text does not produce.
    split_at_video: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Template":
        # Checkpoints written before `split_at_video` existed were tokenised in one pass.
        return cls(**{"split_at_video": False, **data})


TEMPLATES = {
    # The PiTe release's and VTimeLLM's prompt (their inference.py / eval.py): "<video>\n" + the query, in Vicuna v1,
    # tokenised in chunks around the video. What the 7B recipes train with and the official evaluations ask.
    "release": Template(name="release"),
    # The CPU demo's: the frame count said in words and one tokenizer pass (a byte-level BPE, where chunking
    # changes nothing). Kept for the demo checkpoints trained with it; not comparable with published models.
    "demo": Template(name="demo", video_prompt="This is a video with 100 frames: <video>\n{query}",
                     image_prompt="This is an image: <video>\n{query}", split_at_video=False),
}
TEMPLATES["pite"] = TEMPLATES["demo"]  # the demo's earlier name, still in older configs


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ConfigError(f"model.template: unknown template {name!r} (choose from {sorted(TEMPLATES)})")
    return TEMPLATES[name]


@dataclass
class Rendered:
    text: str
    message_spans: list[tuple[int, int]]  # [start, end) of each message's own text
    answer_spans: list[tuple[int, int]]  # [start, end) of each assistant message, its leading space and sep2
    split_at: str = ""  # the placeholder to tokenise around ("" = tokenise the text in one pass)


def first_message(template: Template, query: str, n_frames: int) -> str:
    """The first user message: the video (or, for one frame, image) prompt around the query."""
    prompt = template.image_prompt if n_frames == 1 else template.video_prompt
    return prompt.format(query=query)


def render(template: Template, turns: list[tuple[str, str]], add_generation_prompt: bool = False) -> Rendered:
    """Turns are (role, text) with role "user" or "assistant", alternating and starting with "user"."""
    text = template.system + template.sep
    message_spans, answer_spans = [], []
    for i, (role, message) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {i}: expected a {expected} turn, got {role!r}")
        name = template.user if role == "user" else template.assistant
        text += name + ": "
        start = len(text)
        text += message
        message_spans.append((start, len(text)))
        if role == "user":
            text += template.sep
        else:
            text += template.sep2
            # The answer span starts at the space after "ASSISTANT:": generation prompts end at the colon, so
            # a tokenizer that gives that space its own token (byte-level BPE) must learn to produce it.
            answer_spans.append((start - 1, len(text)))
    if add_generation_prompt:
        if turns and turns[-1][0] == "user":
            text += template.assistant + ":"
        else:
            raise ValueError("a generation prompt needs the conversation to end with a user turn")
    return Rendered(text, message_spans, answer_spans, template.video_token if template.split_at_video else "")


def frame_index(t: float, duration: float) -> int:
    """VTimeLLM's timestamp: round(t / duration * 100), within [0, 99] (Python's round, as VTimeLLM)."""
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    return min(99, max(0, round(t / duration * 100)))


def format_span(start: int, end: int) -> str:
    return f"From {start:02d} to {end:02d}."


# VTimeLLM's answer pattern: two two-digit numbers joined by "to" or "and".
_SPAN = re.compile(r"(\d{2}) (to|and) (\d{2})")


def parse_span(answer: str) -> tuple[int, int] | None:
    """The first "NN to NN" of an answer as frame indices, or None when there is none (a miss)."""
    match = _SPAN.search(answer)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(3))
