"""`segment.backend: sam`: segment-anything (vit_b / vit_l / vit_h checkpoint; `auto` reads the size off the
checkpoint, see `annotate.segment.sam_build`): loading a checkpoint, the three tensor steps `SamSegmenter` runs on
the device, and the stage. The grounding frames of every clip of a batch are encoded together, `segment.batch_size`
images per image-encoder call, in `segment.dtype` (docs/design.md, "Device and dtype"); then all boxes of one frame
go through the fp32 mask decoder in one batched call, and of SAM's three candidate masks per box the one with the
highest predicted IoU is kept.


The steps split what `SamPredictor.set_image` + `predict_torch` do for one image so that the expensive one, the
image encoder, can run on a stack of frames from many clips:
1. `preprocess_frame`: one (h, w, 3) uint8 RGB frame -> SAM's (1, 3, S, S) input, computed on the device (the frame
   crosses the bus as uint8, 4x fewer bytes than float, and the resize runs on the GPU);
2. `encode`: a stack of inputs -> float32 image embeddings, the encoder running in the stage's dtype;
3. `decode_boxes`: one frame's embedding and all its boxes -> one bool mask per box at the frame's size, through
   `SamPredictor.predict_torch` (prompt encoder, mask decoder, upscaling, threshold), best of SAM's three candidates.

torch and segment_anything are imported inside the functions: `annotate.segment` imports this module, and its
GrabCut path must run without loading them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from annotate.config import AnnotateConfig
from annotate.device import DTYPES, enable_tf32, resolve_device, resolve_dtype
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.segment.base import BoxSegmenter, last_line
from annotate.stage import Resources, import_problem, one_line

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_AUTO = "auto"  # any size: built to fit the checkpoint's tensor shapes (annotate.segment.sam_build)
SAM_HOST_MEMORY_GB = {"vit_b": 2.0, "vit_l": 3.0, "vit_h": 5.0}  # weights on the host while loading, with headroom


# --- the device steps ---------------------------------------------------------------------------------------


def preprocess_frame(model, frame: np.ndarray, device) -> tuple["torch.Tensor", tuple[int, int]]:
    """(1, 3, S, S) float32 encoder input on `device` for an (h, w, 3) uint8 RGB frame, and the (h', w') it was
    resized to before padding (what `postprocess_masks` crops back to). S = model.image_encoder.img_size.

    Same recipe as SamPredictor.set_image (longest side -> S, Sam.preprocess's normalise + pad), but with torch's
    antialiased bilinear resize instead of PIL's, so the pixels differ slightly from the predictor's. Not
    ResizeLongestSide.apply_image_torch: it reads the target size off shape[0:2] of a BCHW tensor (B and C), a bug
    in segment-anything 1.0.
    """
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.transforms import ResizeLongestSide

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise StageError("segment", f"frame is {frame.dtype} {tuple(frame.shape)}, expected (h, w, 3) uint8 RGB")
    height, width = frame.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(frame)).to(device)
    x = x.permute(2, 0, 1)[None].float()
    if model.image_format != "RGB":  # the frames are RGB; a model trained on BGR gets them flipped, as set_image does
        x = x.flip(1)
    size = ResizeLongestSide.get_preprocess_shape(height, width, model.image_encoder.img_size)
    x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
    return model.preprocess(x), (int(size[0]), int(size[1]))


def encode(model, images: "torch.Tensor", dtype) -> "torch.Tensor":
    """(n, C, s, s) float32 image embeddings of a stack of preprocessed images; the encoder runs in `dtype` (its
    weights were cast to it in setup), while the prompt encoder and mask decoder that read the embeddings stay fp32."""
    return model.image_encoder(images.to(dtype)).float()


def decode_boxes(predictor, embedding: "torch.Tensor", input_size: tuple[int, int], frame_size: tuple[int, int],
                 boxes: list[np.ndarray]) -> list[np.ndarray]:
    """One bool (h, w) mask per xyxy box (frame pixels) from one frame's (C, s, s) embedding: all boxes in one
    batched decoder call, one mask per box (`multimask_output=False`, as SAM's documentation and Grounded-SAM prompt
    with a box: a box says which object, and the three-way output, meant for an ambiguous point, favours parts)."""
    import torch

    # What SamPredictor.set_torch_image leaves behind, minus its encoder call: the embedding came from the stack.
    predictor.features = embedding[None]
    predictor.input_size, predictor.original_size = tuple(input_size), tuple(frame_size)
    predictor.is_image_set = True
    box_t = torch.as_tensor(np.stack(boxes), dtype=torch.float32, device=embedding.device)
    box_t = predictor.transform.apply_boxes_torch(box_t, frame_size)
    masks, iou_pred, _ = predictor.predict_torch(
        point_coords=None, point_labels=None, boxes=box_t, multimask_output=False
    )
    return list(select_best_masks(masks, iou_pred).cpu().numpy())


def select_best_masks(masks: "torch.Tensor", iou_predictions: "torch.Tensor") -> "torch.Tensor":
    """(B, C, H, W) candidate masks and (B, C) predicted IoUs -> (B, H, W): each box's best candidate."""
    import torch

    best = iou_predictions.argmax(dim=1)
    return masks[torch.arange(masks.shape[0], device=masks.device), best]


# --- loading ------------------------------------------------------------------------------------------------


def load_sam(model_type: str, weights: Optional[str]):
    """Build a segment-anything model of `model_type` (or, for `auto`, of the size its checkpoint has) and load the
    checkpoint (weights only, no pickled code)."""
    if model_type not in SAM_MODEL_TYPES + (SAM_AUTO,):
        expected = " | ".join(SAM_MODEL_TYPES + (SAM_AUTO,))
        raise ConfigError(f"segment.model_type: {model_type!r} is not a SAM model (expected {expected})")
    missing = sam_weights_problem(model_type, weights)
    if missing:
        raise ConfigError(missing)
    import torch

    segment_anything = import_segment_anything()
    # segment-anything's own loader calls torch.load without weights_only; load the state dict ourselves.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if model_type == SAM_AUTO:
        sam = _sam_to_fit(state, weights)
    else:
        sam = segment_anything.sam_model_registry[model_type](checkpoint=None)
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        reason = _size_hint(state) or last_line(str(exc))[:200]
        raise ConfigError(
            f"segment.weights: {weights} does not fit segment.model_type={model_type} ({reason})"
        ) from exc
    return sam


def _size_hint(state) -> str:
    """'it holds a vit_l: set segment.model_type=vit_l' (or auto, for other sizes); "" when no size can be read."""
    from annotate.segment.sam_build import PUBLISHED, arch_from_state, describe

    try:
        size = describe(arch_from_state(state)) if isinstance(state, dict) else ""
    except ValueError:
        return ""
    return f"it holds a {size}: set segment.model_type={size if size in PUBLISHED else SAM_AUTO}" if size else ""


def _sam_to_fit(state, weights: str):
    """A random Sam of the size `state` was saved from; one-line ConfigError when that cannot be read off it."""
    from annotate.segment.sam_build import arch_from_state, build_sam

    try:
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
        return build_sam(arch_from_state(state))
    except ValueError as exc:
        raise ConfigError(f"segment.weights: cannot read a SAM architecture off {weights} "
                          f"for segment.model_type=auto ({last_line(str(exc))[:200]})") from exc


def sam_weights_problem(model_type: str, weights: Optional[str]) -> str:
    """"" when `weights` is a file, else the line that says what to set."""
    if weights and Path(weights).is_file():
        return ""
    name = "sam_vit_*.pth" if model_type == SAM_AUTO else f"sam_{model_type}_*.pth"
    return (f"segment.weights: SAM checkpoint not found ({weights!r}); set segment.weights to a local "
            f"{name} from github.com/facebookresearch/segment-anything#model-checkpoints")


def sam_host_memory_gb(model_type: str, weights: Optional[str]) -> float:
    """Host memory to load a SAM: the table for the named sizes; for `auto`, scaled from the checkpoint's size
    (1 GB + 1.6 x the file fits the table: vit_b 375 MB -> 1.6, vit_h 2.56 GB -> 5.1), else the largest."""
    if model_type in SAM_HOST_MEMORY_GB:
        return SAM_HOST_MEMORY_GB[model_type]
    if weights and Path(weights).is_file():
        return round(1.0 + 1.6 * Path(weights).stat().st_size / 1e9, 1)
    return max(SAM_HOST_MEMORY_GB.values())


def import_segment_anything():
    try:
        import segment_anything
    except ImportError as exc:
        raise ConfigError(
            "segment.backend=sam needs the segment-anything package: pip install segment-anything"
        ) from exc
    return segment_anything


log = logging.getLogger("pite.segment")


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
                from annotate.segment.sam_build import arch_from_state, describe

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
