"""`ground.backend: given`: boxes from the manifest row, `{phrase, frame, box}` in source pixels at a source frame.
A box attaches to the caption's noun phrase that contains its phrase (case-insensitive, whole words; the exact or
shortest phrase wins). The decoder has put every given frame among the tracking frames."""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from annotate.ground.base import finish, fit_box, need_clip, unmatched_hint
from annotate.item import ClipItem, Grounding, Phrase
from annotate.stage import Resources, Stage

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
        clip = need_clip(self.name, item)
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
        finish(self.name, item, self.cfg.ground.same_object_iou)
