"""Ground: place each phrase in one tracking frame by a box (decoded-frame pixels, xyxy).

Two backends (docs/design.md, "Backends"):
- `given`: boxes from the manifest row, `{phrase, frame, box}` in source pixels at a source frame; a box attaches to
  the caption's noun phrase that contains its phrase (case-insensitive, whole words; the exact or shortest phrase
  wins). The decoder has put every given frame among the tracking frames.
- `groundingdino`: transformers' Grounding DINO from a local HF-format dir, in annotate/ground_dino.py (prompts,
  per-phrase scores, the earliest confident grounding frame, batching across the clips of an actor batch).

Every phrase ends as one `Grounding` or one `dropped` entry with its reason; a clip with none grounded is a reject.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem, Grounding, Phrase
from annotate.metrics import box_iou
from annotate.stage import Resources, Stage

PLURAL_NOTE = "plural: kept its best box"


def make_grounder(cfg: AnnotateConfig) -> Stage:
    backend = cfg.ground.backend
    if backend == "given":
        return GivenGrounder(cfg)
    if backend == "groundingdino":
        from annotate.ground_dino import GroundingDinoGrounder

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


def _finish(stage: str, item: ClipItem, same_object_iou: float = 0.8) -> None:
    """Phrases that name one object share it (`mark_same_objects`); a clip whose phrases all got dropped has no
    object to annotate: reject it, naming the reasons, and first the given box whose phrase matched none."""
    if item.groundings:
        mark_same_objects(item.groundings, same_object_iou)
        return
    reasons = sorted(Counter(re.sub(r" \(.*\)$", "", d["reason"]) for d in item.dropped
                             if not d["reason"].startswith("given phrase")).items())
    summary = ", ".join(f"{n} x {r}" for r, n in reasons)
    stray = [u for u in item.unmatched if isinstance(u.get("phrase"), str)]
    if not stray:
        item.reject(stage, f"no phrase grounded ({summary})" if summary else "no phrase grounded")
        return
    more = f"; {len(stray) - 1} more given phrase(s) matched none" if len(stray) > 1 else ""
    detail = "; ".join(x for x in (unmatched_hint(stray[0]["phrase"], item.phrases) + more, summary) if x)
    item.reject(stage, f"no phrase grounded: given phrase {stray[0]['phrase']!r} is in no noun phrase of the "
                       f"caption ({detail})")


def mark_same_objects(groundings: list, threshold: float) -> None:
    """A grounding whose box overlaps an earlier one's by IoU > threshold on the same frame is that object:
    `same_as` = the earlier one's phrase index ("a man" ... "the man")."""
    for i, g in enumerate(groundings):
        for first in groundings[:i]:
            same_frame = first.same_as is None and first.track_frame == g.track_frame
            if same_frame and box_iou(first.box, g.box)[0, 0] > threshold:
                g.same_as = first.phrase_index
                break


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


def implausible_box(box: np.ndarray, width: int, height: int) -> str:
    """Why a given box cannot be in source pixels of a width x height video ("" when it can): every coordinate
    within [0, 1] (a normalised box), or a box that starts in the frame and ends more than 3 frames away (pixels of
    another size, or a scale). A box merely outside the frame is fit_box's "box outside the frame"."""
    if max(width, height) > 4 and np.all(box >= 0) and np.all(box <= 1.0):
        return f"box looks normalised (all coordinates in [0, 1]): give xyxy pixels of the {width}x{height} frame"
    starts_inside = box[0] < width and box[1] < height
    if starts_inside and (box[2] > 3 * width or box[3] > 3 * height):
        return f"box reaches far beyond the {width}x{height} frame (pixels of another size?)"
    return ""


def unmatched_hint(text: str, phrases: Sequence[Phrase]) -> str:
    """What to do about a given phrase that no noun phrase contains: the phrase with its head word, else the
    caption's phrases to pick from."""
    head = text.lower().split()[-1:]
    for p in phrases:
        if p.text.lower().split()[-1:] == head:
            return f"write it as the caption does: {p.text!r}"
    if not phrases:
        return "the caption has no noun phrase"
    listed = ", ".join(repr(p.text) for p in phrases[:6]) + (", ..." if len(phrases) > 6 else "")
    return f"the caption's noun phrases: {listed}"


def _no_box_reason(phrase: str, stray: list[str]) -> str:
    """"no box given", or, when a given box's phrase with the same head word matched no noun phrase (written
    differently: "the apple" for "A red apple"), what to write instead."""
    head = phrase.lower().split()[-1:] if phrase.split() else []
    for text in stray:
        if text.lower().split()[-1:] == head:
            return f"given phrase {text!r} is in no noun phrase of the caption (write it as the caption does: {phrase!r})"
    return "no box given"


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
        return Resources(num_cpus=1, memory_gb=0.05)  # boxes only

    def version(self) -> str:
        return "given"

    def process_item(self, item: ClipItem) -> None:
        clip = _need_clip(self.name, item)
        width, height = clip.ground_size
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
                hint = unmatched_hint(text, item.phrases)
                item.unmatched.append({**raw, "reason": f"no noun phrase of the caption contains it ({hint})"})
                continue
            try:
                frame, box = parse_given(raw)
            except ValueError:
                problems.setdefault(index, []).append("malformed box")
                continue
            doubt = implausible_box(box, clip.info.width, clip.info.height)
            if doubt:
                problems.setdefault(index, []).append(doubt)
                continue
            try:
                pos = clip.track_position(frame)
            except KeyError:
                inside = first <= frame < first + count
                problems.setdefault(index, []).append(
                    f"frame {frame} not decoded for tracking" if inside else f"frame {frame} outside the clip")
                continue
            fitted, reason = fit_box(box * clip.source_scale("ground"), width, height)
            if fitted is None:
                problems.setdefault(index, []).append(reason)
                continue
            found.setdefault(index, []).append((frame, pos, fitted))

        stray = [u.get("phrase") for u in item.unmatched if isinstance(u.get("phrase"), str)]
        for index, phrase in enumerate(item.phrases):
            boxes = found.get(index)
            if not boxes:
                item.drop_phrase(phrase, problems.get(index, [_no_box_reason(phrase.text, stray)])[0])
                continue
            frame, pos, box = min(boxes, key=lambda b: b[0])  # earliest frame; ties keep the first given
            notes = [f"{len(boxes)} boxes given: kept the earliest frame ({frame})"] if len(boxes) > 1 else []
            if index in problems:
                notes.append(f"ignored: {', '.join(problems[index])}")
            item.groundings.append(Grounding(phrase_index=index, track_frame=pos, source_frame=frame, box=box,
                                             score=1.0, note="; ".join(notes)))
        _finish(self.name, item, self.cfg.ground.same_object_iou)


def check_weights_dir(path: Optional[str]) -> str:
    """The Grounding DINO weights dir, or a one-line ConfigError saying what to set."""
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


# --- Grounding DINO (annotate/ground_dino.py) -----------------------------------------------------------------------

# Names of the Grounding DINO backend that stay importable from here. annotate.ground_dino imports this module's
# helpers, so it is loaded on first use (PEP 562) rather than at import: no import cycle, and the `given` path never
# loads it.
_DINO_NAMES = ("GroundingDinoGrounder", "build_prompts", "pick_boxes", "ground_positions", "Prompt", "PhraseHits",
               "prompt_phrase", "join_prompt", "phrase_token_positions")


def __getattr__(name: str):
    if name in _DINO_NAMES:
        from annotate import ground_dino

        return getattr(ground_dino, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
