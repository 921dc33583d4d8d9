"""Ground: place each phrase in one tracking frame by a box (decoded-frame pixels, xyxy).

Two backends (docs/design.md, "Backends"):
- `given`: boxes from the manifest row, `{phrase, frame, box}` in source pixels at a source frame; a box attaches to
  the caption's noun phrase that contains its phrase (case-insensitive, whole words; the exact or shortest phrase
  wins). The decoder has put every given frame among the tracking frames.
- `groundingdino`: transformers' Grounding DINO from a local HF-format dir. Phrases become the prompt
  "a cat. a dog." (split when longer than the model's text limit); a phrase's score for a box is the maximum
  sigmoid logit over its OWN tokens (found from the tokenizer's offsets, so "red" in "a red ball. a red cup." counts
  once for each phrase). It grounds on tracking frame 0 and every `ground.every_n_frames`-th, and keeps the earliest
  frame where the phrase is confident, so objects that enter later are found.

Every phrase ends as one `Grounding` or one `dropped` entry with its reason; a clip with none grounded is a reject.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from annotate.config import AnnotateConfig
from annotate.device import DTYPES, resolve_device, resolve_dtype
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem, Grounding, Phrase
from annotate.stage import Resources, Stage

PLURAL_NOTE = "plural: kept its best box"


def make_grounder(cfg: AnnotateConfig) -> Stage:
    backend = cfg.ground.backend
    if backend == "given":
        return GivenGrounder(cfg)
    if backend == "groundingdino":
        return GroundingDinoGrounder(cfg)
    raise ConfigError(f"ground.backend: unknown backend {backend!r} (given | groundingdino)")


# --- boxes --------------------------------------------------------------------------------------------------------


def fit_box(box: np.ndarray, width: int, height: int) -> tuple[Optional[np.ndarray], str]:
    """Clip an xyxy pixel box to the frame; (None, reason) when nothing of it is left."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return None, "degenerate box"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return None, "box outside the frame"
    clipped = np.clip(box, 0.0, [width, height, width, height]).astype(np.float64)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, "degenerate box"
    return clipped, ""


def cxcywh_to_xyxy(boxes, width: float, height: float) -> np.ndarray:
    """Grounding DINO's `pred_boxes` (normalised centre x, centre y, width, height) -> xyxy pixels of a
    width x height frame; the same convention as `post_process_grounded_object_detection`'s target_sizes."""
    from transformers.image_transforms import center_to_corners_format

    corners = center_to_corners_format(np.asarray(boxes, dtype=np.float64))
    return corners * np.array([width, height, width, height], dtype=np.float64)


def _finish(stage: str, item: ClipItem) -> None:
    """A clip whose phrases all got dropped has no object to annotate: reject it, naming the reasons."""
    if item.groundings:
        return
    reasons = sorted(Counter(re.sub(r" \(.*\)$", "", d["reason"]) for d in item.dropped).items())
    summary = ", ".join(f"{n} x {r}" for r, n in reasons)
    item.reject(stage, f"no phrase grounded ({summary})" if summary else "no phrase grounded")


def _need_clip(stage: str, item: ClipItem):
    if item.clip is None:
        raise StageError(stage, "clip not decoded")
    return item.clip


# --- given boxes ----------------------------------------------------------------------------------------------------


def match_phrase(text: str, phrases: Sequence[Phrase]) -> Optional[int]:
    """Index of the phrase that contains `text` as whole words, case-insensitive: exact match first, then the
    shortest containing phrase, then the first. None when no phrase contains it."""
    needle = " ".join(text.lower().split())
    if not needle:
        return None
    pattern = re.compile(r"(?<!\w)" + re.escape(needle) + r"(?!\w)")
    hits = [i for i, p in enumerate(phrases) if pattern.search(" ".join(p.text.lower().split()))]
    if not hits:
        return None
    return min(hits, key=lambda i: (" ".join(phrases[i].text.lower().split()) != needle, len(phrases[i].text), i))


def parse_given(raw: dict) -> tuple[int, np.ndarray]:
    """(source frame, box xyxy float source px) of a manifest box; ValueError when it is malformed."""
    frame, box = raw.get("frame"), raw.get("box")
    if isinstance(frame, bool) or not isinstance(frame, (int, float)) or frame != int(frame) or frame < 0:
        raise ValueError(f"frame {frame!r}")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"box {box!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in box):
        raise ValueError(f"box {box!r}")
    arr = np.asarray(box, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"box {box!r}")
    return int(frame), arr


class GivenGrounder(Stage):
    name = "ground"

    def resources(self) -> Resources:
        return Resources(num_cpus=1, memory_gb=0.5)

    def version(self) -> str:
        return "given"

    def process_item(self, item: ClipItem) -> None:
        clip = _need_clip(self.name, item)
        width, height = clip.size
        first, count = clip.info.first_index, clip.info.num_frames
        found: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # phrase -> [(source frame, track pos, box)]
        problems: dict[int, list[str]] = {}
        for raw in item.boxes or []:
            text = raw.get("phrase") if isinstance(raw, dict) else None
            if not isinstance(text, str):
                item.unmatched.append({"given": raw, "reason": "malformed box (no phrase)"})
                continue
            index = match_phrase(text, item.phrases)
            if index is None:
                item.unmatched.append({**raw, "reason": "no noun phrase of the caption contains it"})
                continue
            try:
                frame, box = parse_given(raw)
            except ValueError:
                problems.setdefault(index, []).append("malformed box")
                continue
            try:
                pos = clip.track_position(frame)
            except KeyError:
                inside = first <= frame < first + count
                problems.setdefault(index, []).append(
                    f"frame {frame} not decoded for tracking" if inside else f"frame {frame} outside the clip")
                continue
            fitted, reason = fit_box(box * clip.scale, width, height)
            if fitted is None:
                problems.setdefault(index, []).append(reason)
                continue
            found.setdefault(index, []).append((frame, pos, fitted))

        for index, phrase in enumerate(item.phrases):
            boxes = found.get(index)
            if not boxes:
                item.drop_phrase(phrase, problems.get(index, ["no box given"])[0])
                continue
            frame, pos, box = min(boxes, key=lambda b: b[0])  # earliest frame; ties keep the first given
            notes = [f"{len(boxes)} boxes given: kept the earliest frame ({frame})"] if len(boxes) > 1 else []
            if index in problems:
                notes.append(f"ignored: {', '.join(problems[index])}")
            item.groundings.append(Grounding(phrase_index=index, track_frame=pos, source_frame=frame, box=box,
                                             score=1.0, note="; ".join(notes)))
        _finish(self.name, item)


# --- Grounding DINO -------------------------------------------------------------------------------------------------


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




class GroundingDinoGrounder(Stage):
    name = "ground"

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        gc = cfg.ground
        self.weights = check_weights_dir(gc.weights)
        if gc.dtype not in DTYPES:
            raise ConfigError(f"ground.dtype: {gc.dtype!r} is not one of {', '.join(DTYPES)}")
        self.model = None
        self.processor = None
        self.dtype = None  # torch dtype, set in setup

    def resources(self) -> Resources:
        on_gpu = str(self.cfg.ground.device) != "cpu"  # auto asks for a GPU; it runs on the CPU when none is there
        return Resources(num_cpus=1, num_gpus=1.0 if on_gpu else 0.0, memory_gb=4.0)

    def version(self) -> str:
        import transformers

        return f"groundingdino/transformers-{transformers.__version__}"

    def setup(self) -> None:
        import torch
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        gc = self.cfg.ground
        self.device = resolve_device(gc.device)
        self.dtype = getattr(torch, resolve_dtype(gc.dtype, self.device))
        try:
            self.processor = AutoProcessor.from_pretrained(self.weights)
            model = GroundingDinoForObjectDetection.from_pretrained(self.weights, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"ground.weights: cannot load Grounding DINO from {self.weights} "
                              f"({' '.join(str(exc).split())[:200]})") from exc
        if not getattr(self.processor.tokenizer, "is_fast", False):
            raise ConfigError(f"ground.weights: {self.weights} has no fast tokenizer (tokenizer.json); "
                              f"the phrase-to-token map needs its offsets")
        self.model = model.to(self.device).eval()

    def _forward(self, pixels: dict, prompt: Prompt):
        import torch

        n = pixels["pixel_values"].shape[0]
        text = self.processor.tokenizer([prompt.text] * n, return_tensors="pt")
        dev = self.device
        with torch.inference_mode():
            out = self.model(pixel_values=pixels["pixel_values"].to(dev, self.dtype),
                             pixel_mask=pixels["pixel_mask"].to(dev),
                             input_ids=text["input_ids"].to(dev),
                             token_type_ids=text["token_type_ids"].to(dev),
                             attention_mask=text["attention_mask"].to(dev))
        return out.logits.float().cpu(), out.pred_boxes.float().cpu()

    def process_item(self, item: ClipItem) -> None:
        gc = self.cfg.ground
        clip = _need_clip(self.name, item)
        width, height = clip.size
        prompts, skipped = build_prompts([p.text for p in item.phrases], self.processor.tokenizer,
                                         int(self.model.config.max_text_len))
        hit: dict[int, tuple[int, np.ndarray, float]] = {}  # phrase -> (track pos, box, score)
        best_seen: dict[int, float] = {}
        bad_box: dict[int, str] = {}
        pending = {i for p in prompts for i in p.phrase_ids}
        positions = ground_positions(len(clip.track_frames), gc.every_n_frames)
        for lo in range(0, len(positions), max(1, gc.batch_size)):
            if not pending:
                break  # every phrase already has its earliest confident frame
            batch = positions[lo: lo + max(1, gc.batch_size)]
            # One read per batch: a long clip's tracking frames are decoded on demand, in one pass per call.
            frames = clip.track_frames[list(batch)]
            pixels = self.processor.image_processor(images=list(frames), return_tensors="pt")
            for prompt in prompts:
                if not pending.intersection(prompt.phrase_ids):
                    continue
                logits, boxes = self._forward(pixels, prompt)
                hits = pick_boxes(logits, prompt.token_positions, gc.box_threshold, gc.text_threshold)
                for b, pos in enumerate(batch):
                    for j, index in enumerate(prompt.phrase_ids):
                        if index not in pending:
                            continue
                        best_seen[index] = max(best_seen.get(index, 0.0), float(hits.score[b, j]))
                        if not hits.kept[b, j]:
                            continue
                        box, reason = fit_box(cxcywh_to_xyxy(boxes[b, hits.query[b, j]].numpy(), width, height),
                                              width, height)
                        if box is None:
                            bad_box[index] = reason
                            continue
                        hit[index] = (pos, box, float(hits.score[b, j]))
                        pending.discard(index)

        for index, phrase in enumerate(item.phrases):
            if index in hit:
                pos, box, score = hit[index]
                item.groundings.append(Grounding(
                    phrase_index=index, track_frame=pos, source_frame=int(clip.track_indices[pos]), box=box,
                    score=score, note=PLURAL_NOTE if phrase.plural else ""))
            elif index in skipped:
                item.drop_phrase(phrase, skipped[index])
            elif index in bad_box:
                item.drop_phrase(phrase, bad_box[index])
            else:
                item.drop_phrase(phrase, f"no box above threshold (best score {best_seen.get(index, 0.0):.2f})")
        _finish(self.name, item)


def check_weights_dir(path: Optional[str]) -> str:
    """The weights dir, or a one-line ConfigError saying what to set."""
    hint = ("set ground.weights to a local HF-format Grounding DINO dir (config.json, model.safetensors, "
            "processor and tokenizer files), e.g. a save_pretrained copy of IDEA-Research/grounding-dino-tiny")
    if not path:
        raise ConfigError(f"ground.weights: not set; {hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"ground.weights: {path} is not a directory; {hint}")
    if not (p / "config.json").is_file():
        raise ConfigError(f"ground.weights: {path} has no config.json; {hint}")
    return str(p)
