"""What both segmenters share: a box in frame pixels, the plan of a clip's boxes per frame (`BoxPlan`), and the
stage's bookkeeping (`BoxSegmenter`): outcomes that are not a clean object are recorded with `item.drop_object`
("box outside the frame", "degenerate box", "empty mask", ...), kept masks are bool (h, w) at the decoded frame size
and `Grounding.mask_area` gets the mask's share of the frame. The backends differ only in how a frame's boxes become
masks."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from annotate.errors import StageError
from annotate.item import ClipItem
from annotate.stage import Stage

def pixel_box(box: np.ndarray, width: int, height: int) -> tuple[Optional[np.ndarray], Optional[tuple], str]:
    """Clip a float xyxy box to the frame.

    Returns (clipped float box, integer pixel rect (x0, y0, x1, y1) covering it, "") or (None, None, reason).
    The rect holds every pixel the box touches: pixel i covers [i, i+1), so floor the start and ceil the end.
    """
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        return None, None, "degenerate box"
    clipped = np.array([max(box[0], 0.0), max(box[1], 0.0), min(box[2], width), min(box[3], height)])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, None, "box outside the frame"
    rect = (
        int(math.floor(clipped[0])),
        int(math.floor(clipped[1])),
        int(math.ceil(clipped[2])),
        int(math.ceil(clipped[3])),
    )
    return clipped, rect, ""


@dataclass
class BoxPlan:
    """One item's boxes, checked against its frame size and grouped by the frame they were grounded in; what each
    frame's segmentation gives (a mask or the reason there is none) is filed back here with `record`."""

    clip: object  # the item's DecodedClip: boxes and masks are in its grounding frames' pixels
    height: int
    width: int
    boxes: dict[int, np.ndarray] = field(default_factory=dict)  # grounding index -> clipped float xyxy box
    rects: dict[int, tuple] = field(default_factory=dict)  # grounding index -> integer pixel rect
    by_frame: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # frame -> grounding indices
    reasons: dict[int, str] = field(default_factory=dict)  # grounding index -> why it is dropped
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # grounding index -> kept mask

    def frame(self, t: int) -> np.ndarray:
        """(h, w, 3) uint8 the grounding frame at tracking position t."""
        return self.clip.ground_frame(t)

    def frame_boxes(self, t: int) -> tuple[list[np.ndarray], list[tuple]]:
        idx = self.by_frame[t]
        return [self.boxes[i] for i in idx], [self.rects[i] for i in idx]

    def record(self, t: int, out: list) -> None:
        """File frame t's results, one per box in `frame_boxes(t)` order: a bool mask or a str reason."""
        for i, m in zip(self.by_frame[t], out):
            if isinstance(m, str):
                self.reasons[i] = m
            elif not m.any():
                self.reasons[i] = "empty mask"
            else:
                self.masks[i] = m


class BoxSegmenter(Stage):
    """Shared bookkeeping: group boxes by frame, segment each frame's boxes at once, drop what fails.

    `process_item` runs plan -> segment_frame per frame -> finish; a backend that segments many frames at once
    (SAM, across the clips of a batch) calls `plan` and `finish` itself around its own batching."""

    name = "segment"

    def segment_frame(self, frame: np.ndarray, boxes: list[np.ndarray], rects: list[tuple]) -> list:
        """Masks (bool, frame size) for the boxes of one frame; an entry may be a str: the reason it failed."""
        raise NotImplementedError

    def plan(self, item: ClipItem) -> BoxPlan:
        if item.clip is None:
            raise StageError(self.name, "no decoded clip (the decode stage did not run)")
        width, height = item.clip.ground_size
        plan = BoxPlan(item.clip, height, width)
        for i, g in enumerate(item.groundings):
            box, rect, why = pixel_box(g.box, plan.width, plan.height)
            if why:
                plan.reasons[i] = why
            else:
                plan.boxes[i], plan.rects[i] = box, rect
                plan.by_frame[g.track_frame].append(i)
        return plan

    def finish(self, item: ClipItem, plan: BoxPlan) -> None:
        """Masks onto the item (empty where there is none), mask areas, then the drops."""
        shape = (plan.height, plan.width)
        item.masks = [plan.masks.get(i, np.zeros(shape, bool)) for i in range(len(item.groundings))]
        for i, g in enumerate(item.groundings):
            g.mask_area = float(item.masks[i].sum()) / float(plan.height * plan.width)
        for i in sorted(plan.reasons, reverse=True):  # from the end, so earlier indices stay valid
            item.drop_object(i, plan.reasons[i])

    def process_item(self, item: ClipItem) -> None:
        plan = self.plan(item)
        for t in plan.by_frame:
            boxes, rects = plan.frame_boxes(t)
            plan.record(t, self.segment_frame(plan.frame(t), boxes, rects))
        self.finish(item, plan)


def last_line(text: str) -> str:
    """The last non-empty line of a message (a backend's traceback or stderr), for a one-line reject."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"
