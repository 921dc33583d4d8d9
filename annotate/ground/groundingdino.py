"""Ground, production backend: transformers' Grounding DINO from a local HF-format dir (docs/design.md, "Backends").

Phrases become the prompt "a cat. a dog." (split when longer than the model's text limit); a phrase's score for a
box is the maximum sigmoid logit over its OWN tokens (found from the tokenizer's offsets, so "red" in "a red ball. a
red cup." counts once for each phrase). A clip is grounded on tracking frame 0 and every `ground.every_n_frames`-th;
with `ground.pick: best` each phrase keeps its highest-scoring confident detection over all of them (an object that
enters late is found where it shows best) and the other confident frames become its re-detections; with `earliest`
it keeps the first confident frame.

Batching (`process_batch`): the grounding frames of all clips of the actor batch are grouped by the size the
processor resizes them to, so one forward holds frames of one size and no padding. A forward row is one (clip, frame,
prompt); rows go earliest frame first across the clips, at most `ground.batch_size` per forward, each with its own
clip's prompt (the rows' prompts are tokenised together, padded on the right). With `earliest`, a prompt whose phrases are
all found sends no more rows, so a clip that is done sends no more frames. Since a clip's frames are read in order
(ties in score keep the earlier frame), the result does not depend on which clips share a forward.

Precision (`ground.dtype` below float32): the weights stay float32 and the forward runs under torch.autocast, so the
matmuls and convolutions (nearly all the FLOPs) run in bfloat16 while the residual stream, layer norms, softmax and
the box chain (proposals, logit/sigmoid refinements) stay float32; the text side (BERT) runs in float32 outright.
Measured on the CPU with grounding-dino-base's architecture (random weights, box heads given small random last
layers, 3 images of 400x640, the same 900 queries forced in every run so they line up), against float32:
  - all weights in bfloat16 (the earlier setting): logits |diff| mean 0.70, max 55; boxes p99 15.7 px at 1333 px.
    The box heads alone in float32 barely help (p99 14.6 px): the loss is the bf16 proposal/refinement chain, not
    the heads' matmuls. (On the CPU a bf16 grid_sample also returned NaN at random without autocast.)
  - float32 weights + autocast: logits mean 0.20, max 1.05; boxes p99 0.29 px, max 0.63 px.
  - the same with BERT in float32: logits mean 0.18, max 0.95 (BERT alone in bf16: text features within 1.2 %,
    cosine 0.9999); the picked box agreed with float32's for 15 of 15 phrases instead of 14. BERT reads <= 256 tokens
    a row, a few % of a forward at 800x1333, so it stays float32 (TF32 on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from annotate.config import AnnotateConfig
from annotate.device import DTYPES, enable_tf32, frames_to_device, resolve_device, resolve_dtype
from annotate.errors import ConfigError
from annotate.ground.base import PLURAL_NOTE, check_weights_dir, cxcywh_to_xyxy, finish, fit_box, need_clip
from annotate.ground.prompts import PICKS, PhraseHits, Prompt, build_prompts, ground_positions, pick_boxes
from annotate.item import ClipItem, Grounding
from annotate.stage import Resources, Stage, import_problem



# --- one clip's state across forwards -------------------------------------------------------------------------------


@dataclass
class ClipJob:
    """A clip being grounded: its prompts and frames, and per phrase the earliest confident frame found so far."""

    item: ClipItem
    prompts: list[Prompt]
    skipped: dict[int, str]  # phrase -> why it fits no prompt
    positions: list[int]  # tracking-frame positions to ground on, in order
    shape: tuple[int, int]  # (h, w) the processor resizes this clip's frames to
    pick: str = "best"  # ground.pick
    same_object_iou: float = 0.8  # ground.same_object_iou
    hit: dict[int, tuple[int, np.ndarray, float]] = field(default_factory=dict)  # phrase -> (pos, box, score)
    seen: dict[int, list] = field(default_factory=dict)  # phrase -> [(pos, box, score)] every confident frame
    best_seen: dict[int, float] = field(default_factory=dict)
    bad_box: dict[int, str] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)

    def __post_init__(self):
        self.restart()

    def restart(self) -> "ClipJob":
        """Forget every frame seen (a clip re-run alone after a batched forward failed)."""
        self.hit, self.best_seen, self.bad_box, self.seen = {}, {}, {}, {}
        self.pending = {i for p in self.prompts for i in p.phrase_ids}
        return self

    def wants(self, prompt: int) -> bool:
        return self.item.ok and not self.pending.isdisjoint(self.prompts[prompt].phrase_ids)

    def record(self, prompt: int, k: int, hits: PhraseHits, boxes) -> None:
        """One row's result: `hits` of prompt `prompt` on grounding frame k (one frame), `boxes` its (Q, 4) boxes.
        A clip's rows come in frame order, so the first confident frame of a phrase is its earliest."""
        width, height = self.item.clip.ground_size
        for j, index in enumerate(self.prompts[prompt].phrase_ids):
            if index not in self.pending:
                continue
            self.best_seen[index] = max(self.best_seen.get(index, 0.0), float(hits.score[0, j]))
            if not hits.kept[0, j]:
                continue
            box, reason = fit_box(cxcywh_to_xyxy(np.asarray(boxes[hits.query[0, j]]), width, height), width, height)
            if box is None:
                self.bad_box[index] = reason
                continue
            found = (self.positions[k], box, float(hits.score[0, j]))
            self.seen.setdefault(index, []).append(found)
            if index not in self.hit or (self.pick == "best" and found[2] > self.hit[index][2]):
                self.hit[index] = found
            if self.pick == "earliest":
                self.pending.discard(index)

    def finish(self, item: ClipItem) -> None:
        """Every phrase ends as one Grounding or one drop with its reason; none grounded rejects the clip."""
        clip = item.clip
        for index, phrase in enumerate(item.phrases):
            if index in self.hit:
                pos, box, score = self.hit[index]
                redetections = [r for r in self.seen.get(index, []) if r[0] != pos]
                item.groundings.append(Grounding(
                    phrase_index=index, track_frame=pos, source_frame=int(clip.track_indices[pos]), box=box,
                    score=score, note=PLURAL_NOTE if phrase.plural else "", redetections=redetections))
            elif index in self.skipped:
                item.drop_phrase(phrase, self.skipped[index])
            elif index in self.bad_box:
                item.drop_phrase(phrase, self.bad_box[index])
            else:
                item.drop_phrase(phrase, f"no box above threshold (best score {self.best_seen.get(index, 0.0):.2f})")
        finish("ground", item, self.same_object_iou)


class RowQueue:
    """The (frame k, clip j, prompt p) rows of clips of one frame shape, earliest frame first across the clips, so
    each clip's frames go in order and every clip's first frames come early (a clip done early stops sending)."""

    def __init__(self, jobs: Sequence[ClipJob]):
        self.jobs = list(jobs)
        self.rows = sorted((k, j, p) for j, job in enumerate(self.jobs)
                           for k in range(len(job.positions)) for p in range(len(job.prompts)))
        self.at = 0

    def take(self, n: int) -> list[tuple[ClipJob, int, int]]:
        """Up to n next rows whose clip is live and whose prompt still has a phrase to find."""
        out = []
        while self.at < len(self.rows) and len(out) < n:
            k, j, p = self.rows[self.at]
            self.at += 1
            if self.jobs[j].wants(p):
                out.append((self.jobs[j], k, p))
        return out


# --- the stage ------------------------------------------------------------------------------------------------------


def run_outside_autocast(module, device_type: str) -> None:
    """Run `module` (float32 weights) in float32 even inside the model's autocast region."""
    import torch

    inner = module.forward

    def forward(*args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return inner(*args, **kwargs)

    module.forward = forward


def resized_shape(image_processor, height: int, width: int) -> tuple[int, int]:
    """The (h, w) Grounding DINO's processor resizes an h x w frame to (its own rule); the frame's own size when the
    size spec is one we do not know, which only groups clips more finely than needed."""
    from transformers.image_transforms import get_size_with_aspect_ratio
    from transformers.image_utils import get_image_size_for_max_height_width

    size = image_processor.size
    if not getattr(image_processor, "do_resize", True):
        return height, width
    if size.shortest_edge and size.longest_edge:
        return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
    if size.max_height and size.max_width:
        return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
    if size.height and size.width:
        return size.height, size.width
    return height, width


class GroundingDinoGrounder(Stage):
    name = "ground"

    def __init__(self, cfg: AnnotateConfig):
        super().__init__(cfg)
        gc = cfg.ground
        self.weights = check_weights_dir(gc.weights)
        if gc.dtype not in DTYPES:
            raise ConfigError(f"ground.dtype: {gc.dtype!r} is not one of {', '.join(DTYPES)}")
        self.model = None
        self.processor = None
        self.dtype = None  # torch dtype of the matmuls (autocast), set in setup; the weights stay float32

    def resources(self) -> Resources:
        on_gpu = str(self.cfg.ground.device) != "cpu"  # auto asks for a GPU; it runs on the CPU when none is there
        return Resources(num_cpus=1, num_gpus=1.0 if on_gpu else 0.0, memory_gb=4.0)

    def version(self) -> str:
        import transformers

        return f"groundingdino/transformers-{transformers.__version__}"

    def problems(self) -> list[str]:
        found = import_problem("transformers.models.grounding_dino", "ground.backend=groundingdino",
                               "pip install 'transformers>=5' (make setup installs it)")
        if not any(Path(self.weights).glob(p) for p in ("*.safetensors", "pytorch_model*.bin")):
            found.append(f"ground.weights: {self.weights} has no weights file (model.safetensors); it must be a "
                         "save_pretrained copy of a Grounding DINO model")
        return found

    def setup(self) -> None:
        import torch
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        gc = self.cfg.ground
        if gc.pick not in PICKS:
            raise ConfigError(f"ground.pick: expected {' | '.join(PICKS)}, got {gc.pick!r}")
        self.device = resolve_device(gc.device)
        self.dtype = getattr(torch, resolve_dtype(gc.dtype, self.device))
        enable_tf32(self.device)  # the float32 parts (BERT, the box chain) on a GPU
        try:
            self.processor = AutoProcessor.from_pretrained(self.weights)
            # float32 weights whatever ground.dtype: half precision comes from autocast (module docstring)
            model = GroundingDinoForObjectDetection.from_pretrained(self.weights, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"ground.weights: cannot load Grounding DINO from {self.weights} "
                              f"({' '.join(str(exc).split())[:200]})") from exc
        if not getattr(self.processor.tokenizer, "is_fast", False):
            raise ConfigError(f"ground.weights: {self.weights} has no fast tokenizer (tokenizer.json); "
                              f"the phrase-to-token map needs its offsets")
        self.model = model.to(self.device).eval()
        run_outside_autocast(self.model.model.text_backbone, torch.device(self.device).type)

    def process_item(self, item: ClipItem) -> None:
        self.process_batch([item])

    def process_batch(self, items: list[ClipItem]) -> None:
        jobs: list[ClipJob] = []
        for item in items:
            self._guarded(item, lambda it: jobs.append(self._plan(it)))
        groups: dict[tuple[int, int], list[ClipJob]] = {}
        for job in jobs:
            groups.setdefault(job.shape, []).append(job)
        for group in groups.values():
            if len(group) == 1:  # nothing to re-run apart
                self._guarded(group[0].item, lambda _it, group=group: self._run(group))
                continue
            try:
                self._run(group)
            except Exception:  # a forward failed for the batch (out of memory, say): re-run each clip alone, so
                # only a clip that fails alone is rejected, never its batch-mates
                for job in group:
                    self._guarded(job.item, lambda _it, job=job: self._run([job.restart()]))
        for job in jobs:
            if job.item.ok:
                self._guarded(job.item, job.finish)

    def _plan(self, item: ClipItem) -> ClipJob:
        clip = need_clip(self.name, item)
        prompts, skipped = build_prompts([p.text for p in item.phrases], self.processor.tokenizer,
                                         int(self.model.config.max_text_len))
        width, height = clip.ground_size
        positions = ground_positions(len(clip.track_frames), self.cfg.ground.every_n_frames)
        gc = self.cfg.ground
        return ClipJob(item, prompts, skipped, positions, resized_shape(self.processor.image_processor, height, width),
                       pick=gc.pick, same_object_iou=gc.same_object_iou)

    def _run(self, jobs: Sequence[ClipJob]) -> None:
        """All rows of clips of one frame shape, in forwards of at most ground.batch_size rows."""
        queue = RowQueue(jobs)
        while rows := queue.take(max(1, int(self.cfg.ground.batch_size))):
            self._forward_rows(rows)

    def _forward_rows(self, rows: list[tuple[ClipJob, int, int]]) -> None:
        import torch

        gc = self.cfg.ground
        frames, where = self._read_frames(rows)
        rows = [r for r in rows if r[0].item.ok]  # a clip whose frames could not be read is rejected, alone
        if not rows:
            return
        pixels = self._pixels(frames)
        pick = torch.tensor([where[(id(job), k)] for job, k, _ in rows], device=pixels["pixel_values"].device)
        logits, boxes = self._forward(pixels["pixel_values"][pick], pixels["pixel_mask"][pick],
                                      [job.prompts[p].text for job, _, p in rows])
        for b, (job, k, p) in enumerate(rows):
            hits = pick_boxes(logits[b: b + 1], job.prompts[p].token_positions, gc.box_threshold, gc.text_threshold)
            job.record(p, k, hits, boxes[b])

    def _read_frames(self, rows) -> tuple[list[np.ndarray], dict[tuple[int, int], int]]:
        """Each clip's frames of these rows in one read (a long clip decodes them in one pass), stacked per clip;
        and for each (clip, k) its frame's index in the concatenation."""
        wanted: dict[int, tuple[ClipJob, list[int]]] = {}
        for job, k, _ in rows:
            ks = wanted.setdefault(id(job), (job, []))[1]
            if k not in ks:
                ks.append(k)
        frames, where = [], {}
        for job, ks in wanted.values():
            got = []
            self._guarded(job.item, lambda it: got.append(it.clip.ground_frames_at([job.positions[k] for k in ks])))
            if not got:
                continue
            where.update({(id(job), k): sum(len(f) for f in frames) + i for i, k in enumerate(ks)})
            frames.append(np.asarray(got[0]))
        return frames, where

    def _pixels(self, frames: list[np.ndarray]) -> dict:
        """The processor's own resize + normalise + pad, run with torch on the model's device: the frames go up as
        uint8 (a quarter of the float bytes) and nothing is resized on the host's one core."""
        images = [img for clip_frames in frames for img in frames_to_device(clip_frames, self.device)]
        return self.processor.image_processor(images=images, return_tensors="pt", device=self.device,
                                              input_data_format="channels_first")

    def _forward(self, pixel_values, pixel_mask, texts: list[str]):
        import torch

        dev = self.device
        # one prompt per row; padded on the right, so build_prompts' token positions hold in every row
        text = self.processor.tokenizer(texts, padding="longest", padding_side="right", return_tensors="pt")
        half = self.dtype != torch.float32
        with torch.inference_mode(), torch.autocast(torch.device(dev).type, dtype=self.dtype, enabled=half):
            out = self.model(pixel_values=pixel_values.to(dev), pixel_mask=pixel_mask.to(dev),
                             input_ids=text["input_ids"].to(dev), token_type_ids=text["token_type_ids"].to(dev),
                             attention_mask=text["attention_mask"].to(dev))
        return out.logits.float().cpu(), out.pred_boxes.float().cpu()

