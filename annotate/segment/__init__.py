"""Segment stage: one mask per grounding, in the frame it was grounded in, from its box.

One module per backend, named by its `segment.backend` value (docs/design.md, "Backends"):
- `base.py`: what both share: a box in frame pixels, the plan of a clip's boxes per frame (`BoxPlan`) and the stage's
  bookkeeping (`BoxSegmenter`: drops that are not a clean object, masks at the decoded size, `mask_area`);
- `auto.py`: the mask the grounder made (SAM 3), no second model;
- `grabcut.py`: OpenCV GrabCut initialised from the box, on a crop around it;
- `sam.py`: segment-anything, frames of a batch encoded together, boxes of a frame decoded together;
- `sam_build.py`: a SAM of any size built to fit a checkpoint's tensor shapes (`segment.model_type: auto`).
"""

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.segment.auto import MASK_GROUNDERS, GrounderMaskSegmenter
from annotate.segment.base import BoxPlan, BoxSegmenter, last_line, pixel_box
from annotate.segment.grabcut import GRABCUT_SEED, GrabCutSegmenter, grabcut_mask
from annotate.segment.sam import (SAM_AUTO, SAM_HOST_MEMORY_GB, SAM_MODEL_TYPES, SamSegmenter, decode_boxes, encode,
                                  import_segment_anything, load_sam, preprocess_frame, sam_host_memory_gb,
                                  sam_weights_problem, select_best_masks)
from annotate.stage import Stage

__all__ = ["BoxPlan", "BoxSegmenter", "GRABCUT_SEED", "GrabCutSegmenter", "GrounderMaskSegmenter", "MASK_GROUNDERS",
           "SAM_AUTO", "SAM_HOST_MEMORY_GB", "SAM_MODEL_TYPES", "SamSegmenter", "decode_boxes", "encode",
           "grabcut_mask", "import_segment_anything", "last_line", "load_sam", "make_segmenter", "pixel_box",
           "preprocess_frame", "sam_host_memory_gb", "sam_weights_problem", "select_best_masks"]


def make_segmenter(cfg: AnnotateConfig) -> Stage:
    backend = cfg.segment.backend
    if backend == "grabcut":
        return GrabCutSegmenter(cfg)
    if backend == "sam":
        return SamSegmenter(cfg)
    if backend == "auto":
        return GrounderMaskSegmenter(cfg)
    raise ConfigError(f"segment.backend: unknown backend {backend!r} (expected grabcut | sam | auto)")
