"""The record one clip carries through the stages.

Each stage reads the fields its predecessors filled and fills its own. Pixel coordinates inside an item are in
decoded frames (`item.clip`, annotate/clip.py): boxes, masks and points in the grounding frames, tracks in the
tracking frames; `annotate.assemble` normalises each by its own frames' size for the sample. An object that a stage
cannot annotate leaves through `drop_object`, with its reason, so nothing is silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Phrase:
    """A noun chunk of the caption; `start`/`end` are a [start, end) char span into it."""

    text: str
    start: int
    end: int
    head: str = ""
    lemma: str = ""
    plural: bool = False


@dataclass
class Grounding:
    """One object: a phrase placed in one frame by a box."""

    phrase_index: int  # index into ClipItem.phrases
    track_frame: int  # index into clip.track_indices / clip.track_frames
    source_frame: int  # source frame index of that frame
    box: np.ndarray  # (4,) float xyxy in grounding-frame pixels
    score: float = 1.0
    note: str = ""  # e.g. "plural: kept its best box"
    mask_area: Optional[float] = None  # set by the segment stage: mask pixels / frame pixels (scale-free, in [0, 1])
    # Later grounding frames where the phrase was found again: (track_frame, (4,) xyxy grounding px, score).
    redetections: list = field(default_factory=list)
    # Set when another phrase's box is this object's (IoU > ground.same_object_iou on the same frame): that phrase's
    # index. The object is segmented, sampled and tracked once; each phrase keeps its own row.
    same_as: Optional[int] = None
    # A grounder that segments too (SAM 3) sets the object's bool mask on its grounding frame; `segment.backend:
    # auto` takes it (annotate/segment/auto.py), which then clears it here.
    mask: Optional[np.ndarray] = None
    mask_agreement: Optional[float] = None  # set by the propagate stage (annotate/propagate/agreement.py)
    # With confidence.outlines: per T sample, the propagated mask's outline there ([] where absent or not tracked).
    propagated_outline: Optional[list] = None
    confidence: Optional[float] = None  # set by the confidence stage, in [0, 1]
    signals: dict = field(default_factory=dict)  # what the confidence is made of (annotate.confidence)


@dataclass
class ClipItem:
    # --- the manifest row ---
    row: int
    video_id: str
    video: str
    caption: str
    start: Optional[float] = None
    end: Optional[float] = None
    events: Optional[list[dict]] = None
    boxes: Optional[list[dict]] = None  # given boxes: {phrase, frame (source index), box [x0,y0,x1,y1] source px}
    gt: Optional[str] = None
    tar_member: Optional[str] = None  # set when `video` is a WebDataset tar holding the clip
    seed: int = 0  # per-row seed, hash(seed, video_id)
    # --- filled by the stages ---
    clip: Any = None  # annotate.decode.video.DecodedClip
    phrases: list[Phrase] = field(default_factory=list)
    groundings: list[Grounding] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)  # bool (hg, wg) per grounding, in its grounding frame
    points: Optional[np.ndarray] = None  # (N, K, 2) float grounding-frame pixels at each object's grounding frame
    tracks: Optional[np.ndarray] = None  # (N, K, F, 2) float pixels on the tracking frames
    track_vis: Optional[np.ndarray] = None  # (N, K, F) bool
    feat: Optional[np.ndarray] = None  # (T, D) float32
    dropped: list[dict] = field(default_factory=list)  # {phrase, char_span, reason}
    unmatched: list[dict] = field(default_factory=list)  # given boxes that matched no phrase
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    versions: dict[str, str] = field(default_factory=dict)  # backend name -> version, for provenance
    error: Optional[tuple[str, str]] = None  # (stage, message) once rejected

    def representative_rows(self) -> list[int]:
        """For each grounding row, the row whose points and track it shares (itself unless `same_as` names a phrase
        still grounded)."""
        row_of = {g.phrase_index: i for i, g in enumerate(self.groundings)}
        return [row_of.get(g.same_as, i) if g.same_as is not None else i for i, g in enumerate(self.groundings)]

    @property
    def ok(self) -> bool:
        return self.error is None

    def reject(self, stage: str, message: str) -> None:
        if self.error is None:
            self.error = (stage, message)

    def drop_phrase(self, phrase: Phrase, reason: str) -> None:
        self.dropped.append({"phrase": phrase.text, "char_span": [phrase.start, phrase.end], "reason": reason})

    def drop_object(self, index: int, reason: str) -> None:
        """Remove grounding `index` (and its mask/points/tracks when present), recording why."""
        g = self.groundings.pop(index)
        self.drop_phrase(self.phrases[g.phrase_index], reason)
        if index < len(self.masks):
            self.masks.pop(index)
        for name in ("points", "tracks", "track_vis"):
            arr = getattr(self, name)
            if arr is not None and len(arr) > index:
                setattr(self, name, np.delete(arr, index, axis=0))
