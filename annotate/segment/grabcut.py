"""`segment.backend: grabcut`: OpenCV GrabCut initialised from the box (outside = background, inside = probable
foreground), on a crop around the box, so the mask never leaves the box. One clip, one frame at a time."""

from __future__ import annotations


import cv2
import numpy as np

from annotate.errors import ConfigError
from annotate.stage import Resources
from annotate.segment.base import BoxSegmenter, last_line

# GrabCut sees the box plus this much context around it: enough background to fit its colour model,
# not so much that far-away colours dilute it (and cost time: GrabCut is linear in pixels).
GRABCUT_CONTEXT_FRAC = 0.25
GRABCUT_CONTEXT_MIN_PX = 10
GRABCUT_SEED = 0  # OpenCV RNG seed set before each GrabCut call (see grabcut_mask)



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
