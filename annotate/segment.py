"""Segment stage: one mask per grounding, in the frame it was grounded in, from its box.

Backends (`segment.backend`):
- `sam`: segment-anything (vit_b / vit_l / vit_h checkpoint; `auto` reads the size off the checkpoint, see
  `annotate.sam_build`). The grounding frames of every clip of a batch are encoded together, `segment.batch_size`
  images per image-encoder call, in `segment.dtype` (docs/design.md, "Device and dtype"); then all boxes of one
  frame go through the fp32 mask decoder in one batched call, and of SAM's three candidate masks per box the one
  with the highest predicted IoU is kept. The tensor steps live in `annotate.segment_sam`.
- `grabcut`: OpenCV GrabCut initialised from the box (outside = background, inside = probable foreground), on a
  crop around the box, so the mask never leaves the box. One clip, one frame at a time.

Outcomes that are not a clean object are recorded with `item.drop_object`: "box outside the frame",
"degenerate box" (zero area or not finite), "empty mask", "grabcut failed: ...". The kept masks are bool (h, w)
at the decoded frame size; `Grounding.mask_area` gets the mask's share of the frame. Both backends share that
bookkeeping (`BoxPlan`); they differ only in how a frame's boxes become masks.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from annotate.config import AnnotateConfig
from annotate.device import DTYPES, enable_tf32, resolve_device, resolve_dtype
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.segment_sam import (  # noqa: F401  (load_sam, select_best_masks, ...: importable from here too)
    SAM_AUTO,
    SAM_HOST_MEMORY_GB,
    SAM_MODEL_TYPES,
    decode_boxes,
    encode,
    import_segment_anything,
    last_line,
    load_sam,
    preprocess_frame,
    sam_host_memory_gb,
    sam_weights_problem,
    select_best_masks,
)
from annotate.stage import Resources, Stage, import_problem, one_line

# torch and segment_anything are imported where SAM needs them: the GrabCut path runs without loading them.

log = logging.getLogger("pite.segment")

# GrabCut sees the box plus this much context around it: enough background to fit its colour model,
# not so much that far-away colours dilute it (and cost time: GrabCut is linear in pixels).
GRABCUT_CONTEXT_FRAC = 0.25
GRABCUT_CONTEXT_MIN_PX = 10
GRABCUT_SEED = 0  # OpenCV RNG seed set before each GrabCut call (see grabcut_mask)


def make_segmenter(cfg: AnnotateConfig) -> Stage:
    backend = cfg.segment.backend
    if backend == "grabcut":
        return GrabCutSegmenter(cfg)
    if backend == "sam":
        return SamSegmenter(cfg)
    raise ConfigError(f"segment.backend: unknown backend {backend!r} (expected grabcut | sam)")


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


# --- GrabCut ------------------------------------------------------------------------------------------------


def grabcut_mask(frame: np.ndarray, rect: tuple, iters: int) -> np.ndarray:
    """GrabCut's foreground (FGD | PR_FGD) inside integer rect (x0, y0, x1, y1), as a bool mask of frame size.

    Raises cv2.error when GrabCut cannot fit its colour models; the caller decides what that means.
    """
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = rect
    pad = max(GRABCUT_CONTEXT_MIN_PX, int(GRABCUT_CONTEXT_FRAC * max(x1 - x0, y1 - y0)))
    cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)
    # GrabCut is indifferent to channel order (its models are GMMs over the 3 values), so RGB goes in as is.
    crop = np.ascontiguousarray(frame[cy0:cy1, cx0:cx1])
    init = np.full(crop.shape[:2], cv2.GC_BGD, np.uint8)
    init[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0] = cv2.GC_PR_FGD
    if not (init == cv2.GC_BGD).any():
        # The box is the whole frame: nothing outside it to learn the background from, so the box's outer ring
        # (5 % of its shorter side, at least 1 px) is taken as probable background instead.
        ring = max(1, round(0.05 * min(init.shape)))
        init[:ring, :] = init[-ring:, :] = init[:, :ring] = init[:, -ring:] = cv2.GC_PR_BGD
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    # GrabCut seeds its colour models with k-means on OpenCV's global RNG: without a reset the mask would depend on
    # how many boxes this worker segmented before (measured: a few pixels differ), and shards would not be
    # byte-identical across runs. Reset per call, the mask depends on (frame, rect, iters) alone.
    cv2.setRNGSeed(GRABCUT_SEED)
    cv2.grabCut(crop, init, None, bgd_model, fgd_model, iters, cv2.GC_INIT_WITH_MASK)
    mask = np.zeros((height, width), bool)
    # GC_BGD pixels never change, so the mask stays inside the box (or inside its ring when the box fills the frame).
    mask[cy0:cy1, cx0:cx1] = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
    return mask


class GrabCutSegmenter(BoxSegmenter):
    def resources(self) -> Resources:
        return Resources(num_cpus=1.0, num_gpus=0.0, memory_gb=0.05)  # one crop's colour models

    def version(self) -> str:
        return f"grabcut (opencv {cv2.__version__}, {self.cfg.segment.grabcut_iters} iters)"

    def setup(self) -> None:
        if self.cfg.segment.grabcut_iters < 1:
            raise ConfigError(f"segment.grabcut_iters: must be >= 1, got {self.cfg.segment.grabcut_iters}")

    def segment_frame(self, frame, boxes, rects):
        out = []
        for rect in rects:
            try:
                out.append(grabcut_mask(frame, rect, self.cfg.segment.grabcut_iters))
            except cv2.error as exc:  # e.g. a colour model with no samples: this object is dropped, not the clip
                w, h = rect[2] - rect[0], rect[3] - rect[1]
                out.append(f"grabcut failed on a {w}x{h} px box: {last_line(str(exc))}")
        return out


# --- SAM ----------------------------------------------------------------------------------------------------


class SamSegmenter(BoxSegmenter):
    """SAM with box prompts. Pass `model` (a built `segment_anything.modeling.Sam`) to skip loading a checkpoint.

    `process_batch` encodes the grounding frames of all clips of the batch in stacks of `segment.batch_size`;
    `segment_frame` (the per-frame path of `BoxSegmenter.process_item`) runs the same steps on one frame."""

    def __init__(self, cfg: AnnotateConfig, model=None):
        super().__init__(cfg)
        self.model = model
        self.predictor = None
        self.device: Optional[str] = None
        self.dtype = None  # torch dtype of the image encoder, set in setup
        self.kind = cfg.segment.model_type if model is None else "injected model"

    @classmethod
    def from_model(cls, cfg: AnnotateConfig, model) -> "SamSegmenter":
        return cls(cfg, model=model)

    def resources(self) -> Resources:
        on_gpu = self.cfg.segment.device != "cpu"  # auto asks for a GPU; it runs on the CPU when none is there
        return Resources(
            num_cpus=1.0,
            num_gpus=1.0 if on_gpu else 0.0,
            memory_gb=sam_host_memory_gb(self.cfg.segment.model_type, self.cfg.segment.weights),
        )

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg = version("segment-anything")
        except PackageNotFoundError:
            pkg = "unknown"
        # The encoder's precision changes the masks a little, so the provenance says which one made them.
        precision = f", encoder {str(self.dtype).replace('torch.', '')}" if self.dtype is not None else ""
        return f"sam {self.kind} (segment-anything {pkg}{precision})"

    def problems(self) -> list[str]:
        if self.model is not None:  # injected: nothing to load
            return []
        found = import_problem("segment_anything", "segment.backend=sam", "pip install segment-anything")
        missing = sam_weights_problem(self.cfg.segment.model_type, self.cfg.segment.weights)
        return found + ([missing] if missing else [])

    def _check_config(self) -> None:
        sc = self.cfg.segment
        if sc.batch_size < 1:
            raise ConfigError(f"segment.batch_size: must be >= 1, got {sc.batch_size}")
        if str(sc.dtype).strip().lower() not in DTYPES:
            raise ConfigError(f"segment.dtype: unknown {sc.dtype!r} (expected {' | '.join(DTYPES)})")

    def setup(self) -> None:
        import torch

        self._check_config()
        segment_anything = import_segment_anything()
        if self.model is None:
            self.model = load_sam(self.cfg.segment.model_type, self.cfg.segment.weights)
            if self.kind == SAM_AUTO:  # provenance names the size that was loaded, not just "auto"
                from annotate.sam_build import arch_from_state, describe

                self.kind = f"auto={describe(arch_from_state(self.model.state_dict()))}"
        self.device = resolve_device(self.cfg.segment.device)
        self.dtype = getattr(torch, resolve_dtype(self.cfg.segment.dtype, self.device))
        enable_tf32(self.device)  # the fp32 prompt encoder / mask decoder (and a float32 encoder) on a GPU
        self.model.to(torch.device(self.device)).eval()
        # Only the image encoder (~all of SAM's FLOPs) drops to the low precision; the small prompt encoder and
        # mask decoder stay fp32, so box coordinates and mask logits near the threshold keep full precision.
        self.model.image_encoder.to(self.dtype)
        self.predictor = segment_anything.SamPredictor(self.model)

    def segment_frame(self, frame, boxes, rects):
        import torch

        with torch.inference_mode():
            x, size = preprocess_frame(self.model, frame, self.device)
            return decode_boxes(self.predictor, encode(self.model, x, self.dtype)[0], size, frame.shape[:2], boxes)

    def process_batch(self, items: list[ClipItem]) -> None:
        import torch

        planned = [(item, self._attempt(item, lambda: self.plan(item))) for item in items]
        with torch.inference_mode():
            stack = []  # (item, plan, frame, encoder input, resized size), at most batch_size of them
            for item, plan in planned:
                for t in plan.by_frame if plan is not None else ():
                    if not item.ok:  # rejected on an earlier frame: not worth the encoder's time
                        break
                    prepped = self._attempt(item, lambda: preprocess_frame(self.model, plan.frame(t), self.device))
                    if prepped is not None:
                        stack.append((item, plan, t, *prepped))
                    if len(stack) == self.cfg.segment.batch_size:  # ceil(frames / batch_size) encoder calls
                        self._segment_stack(stack)
                        stack = []
            self._segment_stack(stack)
        self.predictor.reset_image()  # drop the last embedding: it would hold device memory until the next batch
        for item, plan in planned:
            if plan is not None and item.ok:
                self._attempt(item, lambda: self.finish(item, plan))

    def _segment_stack(self, stack: list) -> None:
        """One encoder call for the stacked frames, then each frame's boxes through the decoder."""
        embeddings = self._encode_stack([(item, x) for item, _, _, x, _ in stack])
        for (item, plan, t, _, size), emb in zip(stack, embeddings):
            if emb is not None and item.ok:
                boxes, _ = plan.frame_boxes(t)
                self._attempt(item, lambda: plan.record(
                    t, decode_boxes(self.predictor, emb, size, (plan.height, plan.width), boxes)))

    def _encode_stack(self, inputs: list[tuple[ClipItem, "torch.Tensor"]]) -> list:
        """Embeddings for a stack of inputs; None where an image's item was rejected."""
        import torch

        if not inputs:
            return []
        try:
            return list(encode(self.model, torch.cat([x for _, x in inputs]), self.dtype))
        except Exception as exc:  # e.g. out of device memory: find out below which images fail on their own
            first = one_line(exc)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()  # what the failed stack left cached, before retrying image by image
        # One at a time, so a failure rejects only the item whose image fails alone, never the batch.
        out = [self._attempt(item, lambda: encode(self.model, x, self.dtype)[0]) for item, x in inputs]
        if all(e is not None for e in out):  # the stack failed yet every image passes alone: lower batch_size
            log.warning("segment: a stack of %d images failed (%s); encoded one by one", len(inputs), first)
        return out

    def _attempt(self, item: ClipItem, fn):
        """fn()'s result, or None once `item` is rejected with the failure's reason (Stage._guarded's rule)."""
        out = []
        self._guarded(item, lambda _: out.append(fn()))
        return out[0] if out else None
