"""Grounding DINO across the clips of an actor batch: ceil(rows / ground.batch_size) forwards per frame shape, the
same groundings as one clip at a time, early stop, padded prompts, preprocessing on the device, a failure that
rejects only its own clip, and the precision policy (bfloat16 matmuls, BERT and the box chain in float32)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate.frames import LazyFrames
from annotate.ground import make_grounder
from annotate.ground.groundingdino import ClipJob, RowQueue, resized_shape
from annotate.ground.prompts import Prompt
from annotate.item import ClipItem
from tests.annotate_helpers import dropped, gdino_cfg, ground_item, make_clip

# (decoded h, w, tracking frames, phrases) of four clips. The tiny processor resizes 60x80 and 45x60 both to 64x85
# (one stack without padding) and 48x96 to 48x96; the second clip's 17 tokens need two prompts (max_text_len 16).
FIVE = ["A red ball", "a dog", "a cup", "two pillows", "the sofa"]
CLIPS = [(60, 80, 8, ["A red ball", "a dog"]), (60, 80, 5, FIVE), (48, 96, 6, ["the sofa"]),
         (45, 60, 7, ["a lamp", "the cat"])]
EVERY_N = 2  # grounding frames: positions 0, 2, 4, ...
BATCH = 3


def clip_items(seed: int = 0) -> list[ClipItem]:
    """Smooth noise frames (the backbone sees structure), source frames 0, 3, 6, ... of a 10 fps clip."""
    rng = np.random.default_rng(seed)
    items = []
    for i, (h, w, n, texts) in enumerate(CLIPS):
        base = rng.integers(0, 255, (n, h // 3, w // 4, 3)).astype(np.uint8)
        frames = base.repeat(3, axis=1).repeat(4, axis=2)
        item = ground_item(", ".join(texts) + ".", texts, make_clip(frames, np.arange(n) * 3))
        item.video_id = f"clip{i}"
        items.append(item)
    return items


def rows_per_shape(items) -> dict[tuple, int]:
    """Rows each frame shape sends when nothing is found: grounding frames x prompts."""
    out: dict[tuple, int] = {}
    for (h, w, n, texts), shape in zip(CLIPS, [(64, 85), (64, 85), (48, 96), (64, 85)]):
        prompts = 2 if texts is FIVE else 1
        out[shape] = out.get(shape, 0) + len(range(0, n, EVERY_N)) * prompts
    return out


# The tiny random model's logits reach +-18, so every phrase scores ~1.0 everywhere. Its forward's logits are scaled
# by LOGIT_SCALE in these tests (the same in the batched and the one-clip runs): phrase scores then run 0.69-0.85 on
# these frames, and at THRESHOLDS some phrases are found on the first grounding frame, one later (clip 0, position
# 2), some never, and clip 2 has none (a reject).
LOGIT_SCALE = 0.1
THRESHOLDS = dict(box_threshold=0.81, text_threshold=0.81)


def count_forwards(stage, fail=None) -> list[tuple]:
    """Wrap the model's forward: record (rows, pixel h, w) of each call and scale its logits by LOGIT_SCALE;
    `fail(input_ids)` True makes a call raise."""
    stage.ready()
    calls, inner = [], stage.model.forward

    def forward(*args, **kwargs):
        if fail is not None and fail(kwargs["input_ids"]):
            raise RuntimeError("CUDA out of memory (injected)")
        calls.append((kwargs["pixel_values"].shape[0], *kwargs["pixel_values"].shape[-2:]))
        out = inner(*args, **kwargs)
        out.logits = out.logits * LOGIT_SCALE
        return out

    stage.model.forward = forward
    return calls


def locked_version(name: str) -> str:
    """The version requirements/lock.txt pins for a package."""
    lock = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
    return next(ln.split("==")[1].strip() for ln in lock.read_text().splitlines() if ln.startswith(f"{name}=="))


LOCKED_TRANSFORMERS = locked_version("transformers")


def grounder(tiny_dir, **ground):
    return make_grounder(gdino_cfg(tiny_dir, **{"every_n_frames": EVERY_N, "batch_size": BATCH, **ground}))


def summary(item: ClipItem):
    return (item.error, dropped(item),
            [(g.phrase_index, g.track_frame, g.source_frame, round(g.score, 4), np.round(g.box, 3).tolist(), g.note)
             for g in item.groundings])


def one_at_a_time(tiny_dir, **ground) -> list:
    stage = grounder(tiny_dir, **ground)
    count_forwards(stage)
    out = []
    for item in clip_items():
        stage.process([item])
        out.append(summary(item))
    return out


# --- batching -------------------------------------------------------------------------------------------------------


def test_nothing_found_sends_every_row_in_ceil_rows_over_batch_forwards(tiny_dir):
    stage = grounder(tiny_dir, box_threshold=1.01, text_threshold=1.01)
    calls = count_forwards(stage)
    items = clip_items()
    stage.process(items)
    rows = rows_per_shape(items)
    assert rows == {(64, 85): 4 + 3 * 2 + 4, (48, 96): 3}
    # per frame shape, ceil(rows / batch) forwards of at most `batch` rows, each stack of one shape (no padding)
    assert len(calls) == sum(math.ceil(n / BATCH) for n in rows.values()) == 5 + 1
    for shape, n in rows.items():
        sizes = [c[0] for c in calls if c[1:] == shape]
        assert sum(sizes) == n and max(sizes) <= BATCH
    assert [s[:2] for s in map(summary, items)] == [s[:2] for s in one_at_a_time(tiny_dir, box_threshold=1.01,
                                                                                   text_threshold=1.01)]
    assert all(it.error[1].startswith("no phrase grounded") for it in items)


def test_batched_equals_one_clip_at_a_time(tiny_dir):
    stage = grounder(tiny_dir, **THRESHOLDS)
    calls = count_forwards(stage)
    items = clip_items()
    stage.process(items)
    got = [summary(it) for it in items]
    assert got == one_at_a_time(tiny_dir, **THRESHOLDS)
    # The mix the thresholds were chosen for: found on the first frame, on a later one, never; a rejected clip. It
    # comes from transformers' random initialisation of the tiny model, which another version does differently
    # (5.17): there the equality above still holds, but the paths it should cover may not be taken.
    frames = {(i, g[0]): g[1] for i, s in enumerate(got) for g in s[2]}
    mix = (frames.get((0, 0)) == 2 and frames.get((1, 0)) == 0 and "the sofa" in got[1][1]
           and got[2][0] == ("ground", "no phrase grounded (1 x no box above threshold)"))
    import transformers

    if not mix and transformers.__version__ != LOCKED_TRANSFORMERS:
        pytest.skip(f"transformers {transformers.__version__} initialises the tiny model otherwise: the threshold mix "
                    f"this test covers does not occur (batched == one at a time was checked)")
    assert mix, got
    assert sum(c[0] for c in calls) < sum(rows_per_shape(items).values())  # done clips stopped sending


def test_a_clip_with_all_phrases_found_sends_no_more_frames(tiny_dir):
    stage = grounder(tiny_dir, box_threshold=0.0, text_threshold=0.0, batch_size=4)  # all found on the first frame
    calls = count_forwards(stage)
    items = clip_items()
    for item in items:  # lazy frames count what is decoded
        frames = item.clip.track_frames
        item.clip.track_frames = LazyFrames(frames.shape, lambda pos, f=frames: f[pos])
    stage.process(items)
    assert all(it.ok and len(it.groundings) == len(it.phrases) for it in items)
    assert all(g.track_frame == 0 for it in items for g in it.groundings)
    # 64x85: frame 0 of clips 0, 1 (two prompts) and 3 fill one forward, and all is found there. 48x96: clip 2's
    # three rows fit one forward, so all three are read (rows of one forward cannot stop each other).
    assert calls == [(4, 64, 85), (3, 48, 96)]
    assert [it.clip.track_frames.decoded for it in items] == [1, 1, 3, 1]


def test_row_queue_goes_earliest_frame_first_and_skips_done_prompts():
    def job(n_pos, n_prompts, name):
        item = ClipItem(row=0, video_id=name, video="", caption="")
        prompts = [Prompt(f"p{p}.", [p], [(0, 2)], [[1]]) for p in range(n_prompts)]
        return ClipJob(item, prompts, {}, list(range(0, 2 * n_pos, 2)), (1, 1))

    a, b = job(3, 1, "a"), job(2, 2, "b")
    queue = RowQueue([a, b])
    names = lambda rows: [(j.item.video_id, k, p) for j, k, p in rows]  # noqa: E731
    assert names(queue.take(3)) == [("a", 0, 0), ("b", 0, 0), ("b", 0, 1)]
    b.pending.discard(1)  # b's second prompt found its phrase: its rows are skipped from now on
    a.item.reject("ground", "unreadable")  # a rejected clip sends nothing more
    assert names(queue.take(3)) == [("b", 1, 0)]
    assert queue.take(3) == []


def test_padded_prompts_give_the_same_scores_as_each_alone(tiny_dir):
    stage = grounder(tiny_dir)
    stage.setup()
    frames = clip_items()[1].clip.track_frames[:2]
    px = stage._pixels([frames])
    texts = ["a red ball. a dog. a cup. two pillows.", "the sofa."]  # 16 and 5 tokens
    logits, boxes = stage._forward(px["pixel_values"], px["pixel_mask"], texts)
    for b, text in enumerate(texts):
        alone_logits, alone_boxes = stage._forward(px["pixel_values"][b: b + 1], px["pixel_mask"][b: b + 1], [text])
        n = len(stage.processor.tokenizer(text)["input_ids"])
        assert torch.isinf(logits[b, :, n:]).all()  # the padding tokens score nothing
        np.testing.assert_allclose(logits[b, :, :n], alone_logits[0, :, :n], atol=1e-4)
        np.testing.assert_allclose(boxes[b], alone_boxes[0], atol=1e-5)


# --- preprocessing on the device -------------------------------------------------------------------------------------


def test_device_preprocessing_matches_the_processor(tiny_dir):
    stage = grounder(tiny_dir)
    stage.setup()
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 45, 60, 3), dtype=np.uint8)  # another size, the same resized shape
    got = stage._pixels([a, b])
    want = stage.processor.image_processor(images=list(a) + list(b), return_tensors="pt")
    assert got["pixel_values"].shape == (5, 3, 64, 85) and bool(got["pixel_mask"].all())
    np.testing.assert_allclose(got["pixel_values"].cpu(), want["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("size", [None, {"shortest_edge": 64, "longest_edge": 96}, {"height": 50, "width": 70},
                                  {"max_height": 90, "max_width": 60}])
def test_resized_shape_is_the_processors(size):
    from transformers.models.grounding_dino.image_processing_grounding_dino import GroundingDinoImageProcessor

    proc = GroundingDinoImageProcessor(size=size)
    for h, w in [(405, 720), (720, 405), (480, 640), (37, 211), (64, 85), (1080, 1920)]:
        out = proc(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="pt", do_pad=False)
        assert resized_shape(proc, h, w) == tuple(out["pixel_values"].shape[-2:]), (size, h, w)


# --- one clip's failure ---------------------------------------------------------------------------------------------


def test_an_unreadable_clip_is_rejected_alone(tiny_dir):
    reference = one_at_a_time(tiny_dir, **THRESHOLDS)
    stage = grounder(tiny_dir, **THRESHOLDS)
    count_forwards(stage)
    items = clip_items()

    def unreadable(_positions):
        raise OSError("corrupt packet at frame 0")

    items[3].clip.track_frames = LazyFrames(items[3].clip.track_frames.shape, unreadable)
    stage.process(items)
    assert items[3].error == ("ground", "OSError: corrupt packet at frame 0")
    assert [summary(it) for it in items[:3]] == reference[:3]


def test_a_forward_that_fails_for_the_batch_reruns_each_clip_alone(tiny_dir):
    reference = one_at_a_time(tiny_dir, **THRESHOLDS)
    stage = grounder(tiny_dir, **THRESHOLDS)
    stage.setup()
    lamp = stage.processor.tokenizer.convert_tokens_to_ids("lamp")
    # every forward holding clip 3's prompt ("a lamp. the cat.") fails, batched or alone
    calls = count_forwards(stage, fail=lambda ids: bool((ids == lamp).any()))
    items = clip_items()
    stage.process(items)
    assert items[3].error == ("ground", "RuntimeError: CUDA out of memory (injected)")
    assert [summary(it) for it in items[:3]] == reference[:3]
    assert calls  # the other clips' forwards ran


# --- precision ------------------------------------------------------------------------------------------------------


def test_bfloat16_runs_the_matmuls_in_bf16_and_bert_in_fp32(tiny_dir, monkeypatch):
    import annotate.ground.groundingdino as gd

    tf32 = []
    monkeypatch.setattr(gd, "enable_tf32", tf32.append)
    stage = grounder(tiny_dir, device="cpu", dtype="bfloat16")
    stage.setup()
    assert tf32 == ["cpu"]  # TF32 is asked for the stage's device (a no-op off CUDA)
    assert {p.dtype for p in stage.model.parameters()} == {torch.float32}  # half precision comes from autocast
    seen = {}

    def dtype_of(name):
        def hook(_module, _inputs, output):
            seen[name] = (output if isinstance(output, torch.Tensor) else output[0]).dtype
        return hook

    stage.model.model.text_backbone.register_forward_hook(dtype_of("bert"))
    stage.model.model.text_projection.register_forward_hook(dtype_of("proj"))
    px = stage._pixels([clip_items()[0].clip.track_frames[:1]])
    logits, boxes = stage._forward(px["pixel_values"], px["pixel_mask"], ["a dog."])
    assert seen == {"bert": torch.float32, "proj": torch.bfloat16}
    assert torch.isfinite(boxes).all()


@pytest.fixture(scope="module")
def moving_heads_dir(tiny_dir, tmp_path_factory):
    """tiny_dir with small random last layers in the box heads: random init zeroes them, so every box would be its
    anchor and precision could not show in the boxes."""
    from transformers import GroundingDinoForObjectDetection

    out = tmp_path_factory.mktemp("gdino-heads") / "weights"
    shutil.copytree(tiny_dir, out)
    model = GroundingDinoForObjectDetection.from_pretrained(out)
    torch.manual_seed(1)
    with torch.no_grad():
        for head in list(model.bbox_embed) + [model.model.encoder_output_bbox_embed]:
            torch.nn.init.normal_(head.layers[-1].weight, std=0.1)
    model.save_pretrained(out)
    return out


# bfloat16 vs float32 with the same queries (see below), 4 frames x 4 prompts a seed, on the CPU. Measured with this
# tiny model over 100 seeds: logits max |diff| 0.815 (the per-seed max averages 0.19; logits span +-18), boxes max
# |diff| 0.00034 of the frame side. Bounds: 1.5x the worst logit, 3x the worst box (1.3 px on a 1333 px side).
LOGIT_BOUND = 1.25
BOX_BOUND = 0.001


def test_bfloat16_stays_close_to_float32(moving_heads_dir, monkeypatch):
    # Two-stage Grounding DINO picks its queries by a discrete top-k over the encoder's proposals; the tiny random
    # model's proposal scores nearly tie, so bf16 noise reorders them and query i would be another box. The bf16
    # run reuses the fp32 run's selection, so the comparison measures precision, not a reshuffle.
    saved, topk = {}, torch.topk

    def same_topk(x, k, dim=-1, **kw):
        if k != fp32.model.config.num_queries:
            return topk(x, k, dim=dim, **kw)
        if "fp32" in saved:  # the bf16 run: fp32's queries
            return None, saved.pop("fp32")
        saved["fp32"] = topk(x, k, dim=dim, **kw)[1]
        return None, saved["fp32"]

    fp32, bf16 = (grounder(moving_heads_dir, device="cpu", dtype=d) for d in ("float32", "bfloat16"))
    fp32.setup()
    bf16.setup()
    monkeypatch.setattr(torch, "topk", same_topk)
    texts = ["a red ball. a dog.", "two pillows. the sofa. a lamp.", "a cat.", "a red ball. a dog."]
    worst_logit = worst_box = 0.0
    for seed in range(8):
        frames = clip_items(seed)[0].clip.track_frames[:4]
        px = fp32._pixels([frames])
        l32, b32 = fp32._forward(px["pixel_values"], px["pixel_mask"], texts)
        l16, b16 = bf16._forward(px["pixel_values"], px["pixel_mask"], texts)
        valid = torch.isfinite(l32)
        assert torch.equal(valid, torch.isfinite(l16))
        worst_logit = max(worst_logit, float((l32[valid] - l16[valid]).abs().max()))
        worst_box = max(worst_box, float((b32 - b16).abs().max()))
    print(f"bf16 vs fp32: logits max |diff| {worst_logit:.4f}, boxes max |diff| {worst_box:.5f}")
    assert worst_logit <= LOGIT_BOUND and worst_box <= BOX_BOUND, (worst_logit, worst_box)
    assert worst_box > 0  # the box heads do move the boxes: the bound is not vacuous
