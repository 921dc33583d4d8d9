"""Segment stage: one mask per grounding, in the frame it was grounded in, from its box.

Backends (`segment.backend`):
- `sam`: segment-anything (vit_b / vit_l / vit_h checkpoint; `auto` reads the size off the checkpoint, see
  `annotate.sam_build`). All boxes of one frame go through the mask decoder
  in one batched call after a single image encoding; of SAM's three candidate masks per box the one with the
  highest predicted IoU is kept.
- `grabcut`: OpenCV GrabCut initialised from the box (outside = background, inside = probable foreground), on a
  crop around the box, so the mask never leaves the box.

Outcomes that are not a clean object are recorded with `item.drop_object`: "box outside the frame",
"degenerate box" (zero area or not finite), "empty mask", "grabcut failed: ...". The kept masks are bool (h, w)
at the decoded frame size; `Grounding.mask_area` gets the mask's share of the frame.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from annotate.config import AnnotateConfig
from annotate.device import resolve_device
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.stage import Resources, Stage

# torch and segment_anything are imported where SAM needs them: the GrabCut path runs without loading them.

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_AUTO = "auto"  # any size: built to fit the checkpoint's tensor shapes (annotate.sam_build)
SAM_HOST_MEMORY_GB = {"vit_b": 2.0, "vit_l": 3.0, "vit_h": 5.0}  # weights on the host while loading, with headroom

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


class BoxSegmenter(Stage):
    """Shared bookkeeping: group boxes by frame, segment each frame's boxes at once, drop what fails."""

    name = "segment"

    def segment_frame(self, frame: np.ndarray, boxes: list[np.ndarray], rects: list[tuple]) -> list:
        """Masks (bool, frame size) for the boxes of one frame; an entry may be a str: the reason it failed."""
        raise NotImplementedError

    def process_item(self, item: ClipItem) -> None:
        if item.clip is None:
            raise StageError(self.name, "no decoded clip (the decode stage did not run)")
        frames = item.clip.track_frames
        height, width = frames.shape[1:3]
        n = len(item.groundings)
        masks: list = [None] * n
        reasons: dict[int, str] = {}
        by_frame: dict[int, list[int]] = defaultdict(list)
        boxes, rects = {}, {}
        for i, g in enumerate(item.groundings):
            boxes[i], rects[i], why = pixel_box(g.box, width, height)
            if why:
                reasons[i] = why
            else:
                by_frame[g.track_frame].append(i)
        for t, idx in by_frame.items():
            out = self.segment_frame(frames[t], [boxes[i] for i in idx], [rects[i] for i in idx])
            for i, m in zip(idx, out):
                if isinstance(m, str):
                    reasons[i] = m
                elif not m.any():
                    reasons[i] = "empty mask"
                else:
                    masks[i] = m
        item.masks = [m if m is not None else np.zeros((height, width), bool) for m in masks]
        for i, g in enumerate(item.groundings):
            g.mask_area = float(item.masks[i].sum()) / float(height * width)
        for i in sorted(reasons, reverse=True):  # from the end, so earlier indices stay valid
            item.drop_object(i, reasons[i])


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
        return Resources(num_cpus=1.0, num_gpus=0.0, memory_gb=0.5)

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
                out.append(f"grabcut failed on a {w}x{h} px box: {_last_line(str(exc))}")
        return out


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


# --- SAM ----------------------------------------------------------------------------------------------------


def select_best_masks(masks: "torch.Tensor", iou_predictions: "torch.Tensor") -> "torch.Tensor":
    """(B, C, H, W) candidate masks and (B, C) predicted IoUs -> (B, H, W): each box's best candidate."""
    import torch

    best = iou_predictions.argmax(dim=1)
    return masks[torch.arange(masks.shape[0], device=masks.device), best]


def load_sam(model_type: str, weights: Optional[str]):
    """Build a segment-anything model of `model_type` (or, for `auto`, of the size its checkpoint has) and load the
    checkpoint (weights only, no pickled code)."""
    if model_type not in SAM_MODEL_TYPES + (SAM_AUTO,):
        expected = " | ".join(SAM_MODEL_TYPES + (SAM_AUTO,))
        raise ConfigError(f"segment.model_type: {model_type!r} is not a SAM model (expected {expected})")
    if not weights or not Path(weights).is_file():
        name = "sam_vit_*.pth" if model_type == SAM_AUTO else f"sam_{model_type}_*.pth"
        raise ConfigError(
            f"segment.weights: SAM checkpoint not found ({weights!r}); set segment.weights to a local "
            f"{name} from github.com/facebookresearch/segment-anything#model-checkpoints"
        )
    import torch

    segment_anything = _import_segment_anything()
    # segment-anything's own loader calls torch.load without weights_only; load the state dict ourselves.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if model_type == SAM_AUTO:
        sam = _sam_to_fit(state, weights)
    else:
        sam = segment_anything.sam_model_registry[model_type](checkpoint=None)
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        reason = _size_hint(state) or _last_line(str(exc))[:200]
        raise ConfigError(
            f"segment.weights: {weights} does not fit segment.model_type={model_type} ({reason})"
        ) from exc
    return sam


def _size_hint(state) -> str:
    """'it holds a vit_l: set segment.model_type=vit_l' (or auto, for other sizes); "" when no size can be read."""
    from annotate.sam_build import PUBLISHED, arch_from_state, describe

    try:
        size = describe(arch_from_state(state)) if isinstance(state, dict) else ""
    except ValueError:
        return ""
    return f"it holds a {size}: set segment.model_type={size if size in PUBLISHED else SAM_AUTO}" if size else ""


def _sam_to_fit(state, weights: str):
    """A random Sam of the size `state` was saved from; one-line ConfigError when that cannot be read off it."""
    from annotate.sam_build import arch_from_state, build_sam

    try:
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
        return build_sam(arch_from_state(state))
    except ValueError as exc:
        raise ConfigError(f"segment.weights: cannot read a SAM architecture off {weights} "
                          f"for segment.model_type=auto ({_last_line(str(exc))[:200]})") from exc


def sam_host_memory_gb(model_type: str, weights: Optional[str]) -> float:
    """Host memory to load a SAM: the table for the named sizes; for `auto`, scaled from the checkpoint's size
    (1 GB + 1.6 x the file fits the table: vit_b 375 MB -> 1.6, vit_h 2.56 GB -> 5.1), else the largest."""
    if model_type in SAM_HOST_MEMORY_GB:
        return SAM_HOST_MEMORY_GB[model_type]
    if weights and Path(weights).is_file():
        return round(1.0 + 1.6 * Path(weights).stat().st_size / 1e9, 1)
    return max(SAM_HOST_MEMORY_GB.values())


def _import_segment_anything():
    try:
        import segment_anything
    except ImportError as exc:
        raise ConfigError(
            "segment.backend=sam needs the segment-anything package: pip install segment-anything"
        ) from exc
    return segment_anything


class SamSegmenter(BoxSegmenter):
    """SAM with box prompts. Pass `model` (a built `segment_anything.modeling.Sam`) to skip loading a checkpoint."""

    def __init__(self, cfg: AnnotateConfig, model=None):
        super().__init__(cfg)
        self.model = model
        self.predictor = None
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
        return f"sam {self.kind} (segment-anything {pkg})"

    def setup(self) -> None:
        import torch

        segment_anything = _import_segment_anything()
        if self.model is None:
            self.model = load_sam(self.cfg.segment.model_type, self.cfg.segment.weights)
            if self.kind == SAM_AUTO:  # provenance names the size that was loaded, not just "auto"
                from annotate.sam_build import arch_from_state, describe

                self.kind = f"auto={describe(arch_from_state(self.model.state_dict()))}"
        self.model.to(torch.device(resolve_device(self.cfg.segment.device))).eval()
        self.predictor = segment_anything.SamPredictor(self.model)

    def segment_frame(self, frame, boxes, rects):
        import torch

        predictor = self.predictor
        with torch.inference_mode():
            predictor.set_image(np.ascontiguousarray(frame), image_format="RGB")  # one image encoding per frame
            box_t = torch.as_tensor(np.stack(boxes), dtype=torch.float32, device=predictor.device)
            box_t = predictor.transform.apply_boxes_torch(box_t, frame.shape[:2])
            masks, iou_pred, _ = predictor.predict_torch(
                point_coords=None, point_labels=None, boxes=box_t, multimask_output=True
            )
            best = select_best_masks(masks, iou_pred)  # (B, h, w) bool at the frame's size
        return list(best.cpu().numpy())
