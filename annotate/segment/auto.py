"""Segment, `auto` backend: the mask the grounder already made with its box (SAM 3 segments what it detects), so
no second model runs. The sample's provenance says so (`segment: auto/masks from ground.backend=sam3`)."""

from __future__ import annotations

from annotate.errors import ConfigError
from annotate.item import ClipItem
from annotate.segment.base import BoxSegmenter
from annotate.stage import Resources

MASK_GROUNDERS = ("sam3",)  # ground backends that give each object its mask


class GrounderMaskSegmenter(BoxSegmenter):
    def resources(self) -> Resources:
        return Resources(num_cpus=0.25, memory_gb=0.1)

    def version(self) -> str:
        return f"auto/masks from ground.backend={self.cfg.ground.backend}"

    def setup(self) -> None:
        if self.cfg.ground.backend not in MASK_GROUNDERS:
            raise ConfigError(f"segment.backend: auto takes the grounder's masks, and ground.backend="
                              f"{self.cfg.ground.backend} makes none (use ground.backend=sam3, or segment.backend="
                              f"sam | grabcut)")

    def process_item(self, item: ClipItem) -> None:
        plan = self.plan(item)
        for t, indices in plan.by_frame.items():
            masks = [item.groundings[i].mask for i in indices]
            plan.record(t, [m if m is not None else "the grounder made no mask" for m in masks])
        self.finish(item, plan)
        for g in item.groundings:
            g.mask = None  # item.masks holds it now
