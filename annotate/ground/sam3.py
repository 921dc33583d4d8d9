"""Ground, SAM 3 backend: transformers' `Sam3Model` ("Segment Anything with Concepts") prompted with each noun
phrase on the grounding frames; it gives boxes and masks at once, so `segment.backend: auto` needs no second model.

Per actor batch: each grounding frame goes through the vision encoder once (`get_vision_features`), each clip's
phrases through the text encoder once (`get_text_features`); the DETR and mask heads then run on (frame, phrase) rows,
`ground.batch_size` rows a forward, the frame's features repeated per row (the heads take one image per prompt). A
row's score per instance is sigmoid(logit) x sigmoid(presence), as the processor's own post-processing gives; its
best instance above `ground.box_threshold` is the phrase's detection on that frame. The picking rules are Grounding
DINO's (annotate/ground/groundingdino.py): `best` keeps the highest-scoring detection over the frames and the others
as re-detections, `earliest` the first; then the same-object merge. Only the kept instance's mask is brought to the
frame's size.

Precision: float32 weights, the forward under torch.autocast at `ground.dtype` (bfloat16 on a GPU by default); the
boxes and the score come out float32. Measured on the CPU at facebook/sam3's size with random weights
(bench/parity_sam3.py: one 1280x720 frame, 4 phrases, 200 queries each), bfloat16 against float32: scores |diff|
mean 1.3e-4, max 3.8e-4; boxes p99 0.26 px, max 0.39 px; the best query the same in 3 rows of 4 (random weights
leave near-ties), its mask IoU 0.995-0.997 where it was the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotate.config import AnnotateConfig
from annotate.device import DTYPES, enable_tf32, resolve_device, resolve_dtype
from annotate.errors import ConfigError
from annotate.ground.base import PLURAL_NOTE, check_weights_dir, finish, fit_box, need_clip
from annotate.ground.prompts import PICKS, ground_positions
from annotate.item import ClipItem, Grounding
from annotate.stage import Resources, Stage, import_problem

TEXT_TOKENS = 32  # SAM 3's text encoder reads 32 tokens; the processor pads to it but never truncates


@dataclass
class PhraseFinds:
    """One clip's detections so far: per phrase every confident (position, box, score, mask logits row) seen."""

    item: ClipItem
    positions: list[int]
    pick: str
    seen: dict[int, list] = field(default_factory=dict)
    best_seen: dict[int, float] = field(default_factory=dict)

    def record(self, phrase: int, pos: int, box: np.ndarray, score: float, mask) -> None:
        self.best_seen[phrase] = max(self.best_seen.get(phrase, 0.0), score)
        self.seen.setdefault(phrase, []).append((pos, box, score, mask))

    def kept(self, phrase: int):
        found = self.seen.get(phrase, [])
        if not found:
            return None
        return found[0] if self.pick == "earliest" else max(found, key=lambda f: f[2])  # ties: the earlier


class Sam3Grounder(Stage):
    name = "ground"

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        gc = cfg.ground
        self.weights = check_weights_dir(gc.weights, "SAM 3", "facebook/sam3")
        if gc.dtype not in DTYPES:
            raise ConfigError(f"ground.dtype: {gc.dtype!r} is not one of {', '.join(DTYPES)}")
        if gc.pick not in PICKS:
            raise ConfigError(f"ground.pick: expected {' | '.join(PICKS)}, got {gc.pick!r}")
        self.model = self.processor = self.dtype = None

    def resources(self) -> Resources:
        on_gpu = str(self.cfg.ground.device) != "cpu"
        return Resources(num_cpus=1, num_gpus=1.0 if on_gpu else 0.0, memory_gb=6.0)

    def version(self) -> str:
        import transformers

        return f"sam3/transformers-{transformers.__version__}"

    def problems(self) -> list[str]:
        found = import_problem("transformers.models.sam3", "ground.backend=sam3",
                               "pip install 'transformers>=5.1' (make setup installs it)")
        if not any(Path(self.weights).glob(p) for p in ("*.safetensors", "pytorch_model*.bin")):
            found.append(f"ground.weights: {self.weights} has no weights file (model.safetensors); it must be a "
                         "save_pretrained copy of facebook/sam3")
        return found

    def setup(self) -> None:
        import torch
        from transformers import Sam3Model, Sam3Processor

        gc = self.cfg.ground
        self.device = resolve_device(gc.device)
        self.dtype = getattr(torch, resolve_dtype(gc.dtype, self.device))
        enable_tf32(self.device)
        try:
            self.processor = Sam3Processor.from_pretrained(self.weights)
            model = Sam3Model.from_pretrained(self.weights, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"ground.weights: cannot load SAM 3 from {self.weights} "
                              f"({' '.join(str(exc).split())[:200]})") from exc
        self.model = model.to(self.device).eval()

    def process_item(self, item: ClipItem) -> None:
        self.process_batch([item])

    def process_batch(self, items: list[ClipItem]) -> None:
        for item in items:  # clips one by one: a clip's frames share its phrases' text features
            self._guarded(item, self._ground_clip)

    # --- one clip ---------------------------------------------------------------------------------------------------

    def _ground_clip(self, item: ClipItem) -> None:
        clip = need_clip(self.name, item)
        gc = self.cfg.ground
        positions = ground_positions(len(clip.track_frames), gc.every_n_frames)
        finds = PhraseFinds(item, positions, gc.pick)
        texts = [p.text for p in item.phrases]
        if texts:
            text = self._text_features(texts)
            step = max(1, int(gc.batch_size))
            for lo in range(0, len(positions), step):  # frames in groups, so a long clip's frames never pile up
                frames = clip.ground_frames_at(positions[lo:lo + step])
                self._frames(finds, positions[lo:lo + step], frames, text)
        self._finish(finds)

    def _autocast(self):
        import torch

        half = self.dtype != torch.float32
        return torch.autocast(torch.device(self.device).type, dtype=self.dtype, enabled=half)

    def _text_features(self, texts: list[str]):
        """(projected text sequence (P, 32, D), attention mask (P, 32)) of the clip's phrases, read once."""
        import torch

        tok = self.processor.tokenizer(texts, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                                       return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self.model.get_text_features(input_ids=ids, attention_mask=mask)
        return out.pooler_output, mask

    def _frames(self, finds: PhraseFinds, positions: list[int], frames: np.ndarray, text) -> None:
        """Every phrase on these frames: the vision encoder once per frame, the heads once per (frame, phrase) row."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        embeds, mask = text
        n_phrases, h, w = embeds.shape[0], frames.shape[1], frames.shape[2]
        pixels = self.processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        with torch.inference_mode(), self._autocast():
            vision = self.model.get_vision_features(pixel_values=pixels.to(self.device))
            rows = [(f, p) for f in range(len(frames)) for p in range(n_phrases)]
            step = max(1, int(self.cfg.ground.batch_size))
            for lo in range(0, len(rows), step):
                part = rows[lo:lo + step]
                fi = torch.tensor([f for f, _ in part], device=embeds.device)
                pi = torch.tensor([p for _, p in part], device=embeds.device)
                # Sam3Model.forward reads `text_embeds.pooler_output` (its docstring says a tensor): hand it the
                # output type get_text_features returns, with the rows of this forward.
                out = self.model(vision_embeds=select_rows(vision, fi),
                                 text_embeds=BaseModelOutputWithPooling(pooler_output=embeds[pi]),
                                 attention_mask=mask[pi])
                self._record(finds, [(positions[f], p) for f, p in part], out, (h, w))

    def _record(self, finds: PhraseFinds, rows: list[tuple[int, int]], out, size: tuple[int, int]) -> None:
        import torch

        scores = (torch.sigmoid(out.pred_logits.float()) * torch.sigmoid(out.presence_logits.float())).cpu()
        boxes = out.pred_boxes.float().cpu().numpy()  # xyxy in [0, 1]
        h, w = size
        for b, (pos, phrase) in enumerate(rows):
            q = int(torch.argmax(scores[b]))
            score = float(scores[b, q])
            if score < self.cfg.ground.box_threshold:
                finds.best_seen[phrase] = max(finds.best_seen.get(phrase, 0.0), score)
                continue
            box, _ = fit_box(boxes[b, q] * np.array([w, h, w, h]), w, h)
            if box is not None:
                finds.record(phrase, pos, box, score, out.pred_masks[b, q].float().cpu())

    def _finish(self, finds: PhraseFinds) -> None:
        """Each phrase: its kept detection with its mask at the frame's size, or a drop with its reason."""
        item = finds.item
        clip = item.clip
        w, h = clip.ground_size
        for index, phrase in enumerate(item.phrases):
            kept = finds.kept(index)
            if kept is None:
                item.drop_phrase(phrase, f"no box above threshold (best score {finds.best_seen.get(index, 0.0):.2f})")
                continue
            pos, box, score, logits = kept
            item.groundings.append(Grounding(
                phrase_index=index, track_frame=pos, source_frame=int(clip.track_indices[pos]), box=box, score=score,
                note=PLURAL_NOTE if phrase.plural else "", mask=mask_at(logits, h, w),
                redetections=[(p, b, s) for p, b, s, _ in finds.seen.get(index, []) if p != pos]))
        finish(self.name, item, self.cfg.ground.same_object_iou)


def select_rows(vision, index):
    """The vision encoder's output for the frames `index` (one per head row)."""
    return type(vision)(last_hidden_state=vision.last_hidden_state[index],
                        fpn_hidden_states=tuple(x[index] for x in vision.fpn_hidden_states),
                        fpn_position_encoding=tuple(x[index] for x in vision.fpn_position_encoding))


def mask_at(logits, height: int, width: int) -> np.ndarray:
    """One instance's mask logits (h', w') -> bool (height, width): bilinear upsampling of the probability, > 0.5,
    as the processor's post_process_instance_segmentation does."""
    import torch
    import torch.nn.functional as F

    prob = torch.sigmoid(logits[None, None].float())
    return (F.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()
