"""Propagate, transformers' SAM 2-style video trackers: `Sam2VideoModel` (sam2_video), `EdgeTamVideoModel`
(edgetam_video) and `Sam3TrackerVideoModel` (sam3_tracker) share one inference-session API, so one module drives all
three (`FAMILIES`).

Each object is started from its mask (or box, `confidence.prompt`) on its grounding frame and followed forward to the
clip's end and backward to its start, in two streamed passes: frames go in one at a time and, after each, what the
model will not read again is dropped from the session (frames and per-object outputs older than its memory of
`num_maskmem` frames and `max_object_pointers_in_encoder` pointers; the prompt frames stay), so memory stays flat
however long the clip. The model's object score says whether the object is there (> 0); a present frame's mask is
brought to the tracking frame's size and compared with the points there (`agreement.agreement_counts`), then
dropped: no clip's masks are ever held at once.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from annotate.assemble import mask_outline
from annotate.clip import ground_to_track
from annotate.config import AnnotateConfig
from annotate.device import DTYPES, enable_tf32, resolve_device, resolve_dtype
from annotate.errors import ConfigError, StageError
from annotate.item import ClipItem
from annotate.propagate.agreement import AgreementCounts, agreement_counts
from annotate.stage import Resources, Stage, import_problem

# confidence.propagation -> (model class, processor class, Hub repo of the published weights)
FAMILIES = {
    "sam2_video": ("Sam2VideoModel", "Sam2VideoProcessor", "facebook/sam2.1-hiera-large"),
    "edgetam_video": ("EdgeTamVideoModel", "Sam2VideoProcessor", "yonigozlan/EdgeTAM-hf"),
    "sam3_tracker": ("Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor", "facebook/sam3"),
}
PROMPTS = ("mask", "box")
CHUNK = 32  # tracking frames read at a time (a long clip's frames are decoded lazily)
OUTLINE_POINTS = 24  # vertices of a kept propagated outline (confidence.outlines): a shape to compare, not a mask


def patch_edgetam_score_shape(model_cls) -> None:
    """transformers 5.24's EdgeTamVideoModel._use_mask_as_output returns object scores (B, 1) where the decoder's
    are (B, 1, 1), so a frame holding a mask-prompted object and a tracked one fails to concatenate them. Give the
    scores the decoder's shape (idempotent; a fixed release is left alone)."""
    inner = model_cls._use_mask_as_output
    if getattr(inner, "pite_fixed", False):
        return

    def use_mask_as_output(self, *args, **kwargs):
        out = inner(self, *args, **kwargs)
        if out.object_score_logits.dim() == 2:
            out.object_score_logits = out.object_score_logits.unsqueeze(-1)
        return out

    use_mask_as_output.pite_fixed = True
    model_cls._use_mask_as_output = use_mask_as_output


class VideoPropagator(Stage):
    name = "propagate"

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        c = cfg.confidence
        if c.propagation not in FAMILIES:
            raise ConfigError(f"confidence.propagation: unknown {c.propagation!r} (none | {' | '.join(FAMILIES)})")
        if c.prompt not in PROMPTS:
            raise ConfigError(f"confidence.prompt: expected {' | '.join(PROMPTS)}, got {c.prompt!r}")
        if c.dtype not in DTYPES:
            raise ConfigError(f"confidence.dtype: {c.dtype!r} is not one of {', '.join(DTYPES)}")
        self.family = FAMILIES[c.propagation]
        self.weights = c.weights
        self.model = self.processor = None
        self.samples_at: dict[int, list[int]] = {}
        self.peak_held = 0  # most frames a session held at once (flat however long the clip: the tests check)

    def resources(self) -> Resources:
        on_gpu = str(self.cfg.confidence.device) != "cpu"
        return Resources(num_cpus=1, num_gpus=1.0 if on_gpu else 0.0, memory_gb=3.0)

    def version(self) -> str:
        import transformers

        return f"{self.cfg.confidence.propagation}/{self.cfg.confidence.prompt}/transformers-{transformers.__version__}"

    def problems(self) -> list[str]:
        c = self.cfg.confidence
        found = import_problem("transformers", f"confidence.propagation={c.propagation}", "make setup installs it")
        hint = f"a save_pretrained copy of {self.family[2]} (or `pite weights random --recipe sam3`)"
        if not c.weights:
            return found + [f"confidence.weights: not set; give the propagator's local HF-format dir, {hint}"]
        if not (Path(c.weights).expanduser() / "config.json").is_file():
            found.append(f"confidence.weights: {c.weights} has no config.json; it must be {hint}")
        return found

    def setup(self) -> None:
        import torch
        import transformers

        c = self.cfg.confidence
        model_cls, processor_cls = (getattr(transformers, n) for n in self.family[:2])
        if model_cls.__name__ == "EdgeTamVideoModel":
            patch_edgetam_score_shape(model_cls)
        self.device = resolve_device(c.device)
        self.dtype = getattr(torch, resolve_dtype(c.dtype, self.device))
        enable_tf32(self.device)
        try:
            self.processor = processor_cls.from_pretrained(str(Path(c.weights).expanduser()))
            model = model_cls.from_pretrained(str(Path(c.weights).expanduser()), dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"confidence.weights: cannot load {model_cls.__name__} from {c.weights} "
                              f"({' '.join(str(exc).split())[:200]})") from exc
        self.model = model.to(self.device).eval()
        self.keep = max(int(model.config.num_maskmem), int(model.config.max_object_pointers_in_encoder))

    def process_item(self, item: ClipItem) -> None:
        if item.tracks is None or len(item.tracks) != len(item.groundings):
            raise StageError(self.name, "tracks missing or not one row per object (run track first)")
        prompts = self._prompts(item)
        counts = [AgreementCounts() for _ in item.groundings]
        self.samples_at: dict[int, list[int]] = {}  # tracking frame -> the T samples taken there
        if self.cfg.confidence.outlines:
            for t, pos in enumerate(item.clip.sample_track_positions()):
                if pos >= 0:
                    self.samples_at.setdefault(int(pos), []).append(t)
            for g in item.groundings:
                g.propagated_outline = [[] for _ in range(len(item.clip.sample_indices))]
        for reverse in (False, True):
            self._pass(item, prompts, counts, reverse)
        for g, c in zip(item.groundings, counts):
            g.mask_agreement = c.signal()

    def _prompts(self, item: ClipItem) -> dict[int, tuple[int, object]]:
        """object id (grounding index + 1) -> (its grounding frame, its mask or tracking-pixel box)."""
        out = {}
        for i, g in enumerate(item.groundings):
            if self.cfg.confidence.prompt == "mask" and i < len(item.masks) and item.masks[i].any():
                out[i + 1] = (g.track_frame, item.masks[i])  # any size: the processor resizes it
            else:
                box = ground_to_track(item.clip, np.asarray(g.box, np.float64).reshape(2, 2)).ravel()
                out[i + 1] = (g.track_frame, [float(v) for v in box])
        return out

    def _pass(self, item: ClipItem, prompts: dict, counts: list[AgreementCounts], reverse: bool) -> None:
        """One streamed pass: forward from the earliest grounding frame, or backward from the latest; an object
        joins when the pass reaches its frame and counts frames after it (forward) or before it (backward)."""
        import torch

        clip = item.clip
        w, h = clip.size
        n = len(clip.track_frames)
        starts = [k for k, _ in prompts.values()]
        order = list(range(max(starts), -1, -1)) if reverse else list(range(min(starts), n))
        session = self.processor.init_video_session(inference_device=self.device, dtype=self.dtype)
        for lo in range(0, len(order), CHUNK):
            at = order[lo:lo + CHUNK]
            frames = clip.track_frames[min(at):max(at) + 1]
            for i in at:
                frame = frames[i - min(at)]
                self._add_prompts(session, prompts, i, (h, w))
                if session.get_obj_num() == 0:
                    continue
                pixels = self.processor(images=frame, return_tensors="pt").pixel_values[0].to(self.device, self.dtype)
                with torch.inference_mode():
                    out = self.model(inference_session=session, frame_idx=i, frame=pixels, reverse=reverse)
                self._score(item, out, i, (h, w), prompts, counts, reverse)
                self._prune(session, i, reverse)
        del session
        gc.collect()

    def _add_prompts(self, session, prompts: dict, i: int, size: tuple[int, int]) -> None:
        new = {o: p for o, (k, p) in prompts.items() if k == i}
        masks = {o: p for o, p in new.items() if isinstance(p, np.ndarray)}
        boxes = {o: p for o, p in new.items() if not isinstance(p, np.ndarray)}
        if masks:
            self.processor.add_inputs_to_inference_session(session, frame_idx=i, obj_ids=list(masks),
                                                           input_masks=list(masks.values()))
        if boxes:
            self.processor.add_inputs_to_inference_session(session, frame_idx=i, obj_ids=list(boxes),
                                                           input_boxes=[list(boxes.values())], original_size=size)

    def _score(self, item: ClipItem, out, i: int, size: tuple[int, int], prompts: dict, counts: list,
               reverse: bool) -> None:
        """This frame's masks against the points of each object the pass has reached (its own frame counted by
        the forward pass only)."""
        scores = out.object_score_logits.float().reshape(-1).cpu().numpy()
        masks = None
        for j, obj in enumerate(out.object_ids):
            k = prompts[obj][0]
            if (reverse and i >= k) or (not reverse and i < k):
                continue
            present = bool(scores[j] > 0)
            if present and masks is None:
                masks = self.processor.post_process_masks([out.pred_masks.float().cpu()], original_sizes=[size],
                                                          binarize=True)[0][:, 0].numpy()
            g = obj - 1
            mask = masks[j] if present else np.zeros(size, bool)
            if present and i in self.samples_at:
                outline = mask_outline(mask, max_points=OUTLINE_POINTS, parts=2)
                for t in self.samples_at[i]:
                    item.groundings[g].propagated_outline[t] = outline
            counts[g] = counts[g].add(agreement_counts(mask[None], np.array([present]), item.tracks[g][:, i:i + 1],
                                                       item.track_vis[g][:, i:i + 1]))

    def _prune(self, session, i: int, reverse: bool) -> None:
        """Drop what the model will not read again: the frame `keep` steps back and its per-object outputs (the
        prompt frames' outputs stay), and the full-resolution masks of every stored output."""
        old = i + self.keep if reverse else i - self.keep
        self.peak_held = max(self.peak_held, len(session.processed_frames))
        session.processed_frames.pop(old, None)
        for per_obj in session.output_dict_per_obj.values():
            per_obj["non_cond_frame_outputs"].pop(old, None)
            for stored in per_obj["non_cond_frame_outputs"].values():
                stored.pop("high_res_masks", None)
