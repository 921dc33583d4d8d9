"""The stages in order, and a plain in-process runner for one clip or a notebook.

The Ray job (`pipelines.annotate`) runs the same stage objects as actors; `ClipAnnotator` runs them in a loop.
Both end with `annotate.assemble.assemble`, so a clip gives the same sample either way.
"""

from __future__ import annotations

import hashlib
from typing import Optional

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.item import ClipItem
from annotate.stage import Stage

STAGE_NAMES = ("decode", "nouns", "ground", "segment", "points", "track", "propagate", "confidence", "features")


def stage_names(cfg: AnnotateConfig) -> tuple[str, ...]:
    """The stages a config runs: `propagate` only with a propagator (confidence.propagation)."""
    return tuple(n for n in STAGE_NAMES if n != "propagate" or cfg.confidence.propagation != "none")


def build_stage(name: str, cfg: AnnotateConfig) -> Stage:
    """One stage by name, with the backend its config section selects (imports stay lazy: GPU libs are heavy)."""
    if name == "decode":
        from annotate.decode import DecodeStage

        return DecodeStage(cfg)
    if name == "nouns":
        from annotate.nouns import NounStage

        return NounStage(cfg)
    if name == "ground":
        from annotate.ground import make_grounder

        return make_grounder(cfg)
    if name == "segment":
        from annotate.segment import make_segmenter

        return make_segmenter(cfg)
    if name == "points":
        from annotate.points import PointsStage

        return PointsStage(cfg)
    if name == "track":
        from annotate.track import make_tracker

        return make_tracker(cfg)
    if name == "propagate":
        from annotate.propagate import make_propagator

        return make_propagator(cfg)
    if name == "confidence":
        from annotate.confidence import ConfidenceStage

        return ConfidenceStage(cfg)
    if name == "features":
        from annotate.features import make_feature_extractor

        return make_feature_extractor(cfg)
    raise ValueError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")


def build_stages(cfg: AnnotateConfig) -> list[Stage]:
    return [build_stage(name, cfg) for name in stage_names(cfg)]


def checked_stages(cfg: AnnotateConfig) -> list[Stage]:
    """Every stage built (no model loaded) and asked for its `problems`: all of them at once as one ConfigError of
    a line each, so a recipe's missing packages and weights are fixed in one go before anything starts."""
    stages, found = [], []
    for name in stage_names(cfg):
        try:
            stage = build_stage(name, cfg)
        except ConfigError as exc:
            found.append(str(exc))
            continue
        found += stage.problems()
        stages.append(stage)
    if found:
        raise ConfigError("\n".join(found))
    return stages


def row_seed(seed: int, video_id: str) -> int:
    """Per-row seed from hash(seed, video_id): independent of the row's position and of the worker."""
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_item(
    row: int, video_id: str, video: str, caption: str, seed: int = 0, *, start: Optional[float] = None,
    end: Optional[float] = None, events: Optional[list] = None, boxes: Optional[list] = None,
    gt: Optional[str] = None, tar_member: Optional[str] = None,
) -> ClipItem:
    return ClipItem(
        row=row, video_id=video_id, video=video, caption=caption, start=start, end=end, events=events,
        boxes=boxes, gt=gt, tar_member=tar_member, seed=row_seed(seed, video_id),
    )


class ClipAnnotator:
    """All stages in one process: `annotate([...items])` fills them (or rejects them) in place."""

    def __init__(self, cfg: AnnotateConfig, stages: Optional[list[Stage]] = None):
        self.cfg = cfg
        self.stages = stages if stages is not None else build_stages(cfg)

    def setup(self) -> "ClipAnnotator":
        for stage in self.stages:
            stage.ready()
        return self

    def annotate(self, items: list[ClipItem]) -> list[ClipItem]:
        for stage in self.stages:
            stage.process(items)
        return items
