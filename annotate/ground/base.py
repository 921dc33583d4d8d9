"""What both grounders share: boxes fitted to the frame, the same-object merge, the end of a clip's grounding (a
clip with no phrase grounded is a reject that names why), and the Grounding DINO weights check."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem, Phrase
from annotate.metrics import box_iou

PLURAL_NOTE = "plural: kept its best box"

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


def finish(stage: str, item: ClipItem, same_object_iou: float = 0.8) -> None:
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


def need_clip(stage: str, item: ClipItem):
    if item.clip is None:
        raise StageError(stage, "clip not decoded")
    return item.clip


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


def check_weights_dir(path: Optional[str], model: str = "Grounding DINO",
                      example: str = "IDEA-Research/grounding-dino-tiny") -> str:
    """The grounder's weights dir (a local HF-format dir), or a one-line ConfigError saying what to set."""
    hint = (f"set ground.weights to a local HF-format {model} dir (config.json, model.safetensors, "
            f"processor and tokenizer files), e.g. a save_pretrained copy of {example}")
    if not path:
        raise ConfigError(f"ground.weights: not set; {hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"ground.weights: {path} is not a directory; {hint}")
    if not (p / "config.json").is_file():
        raise ConfigError(f"ground.weights: {path} has no config.json; {hint}")
    return str(p)
