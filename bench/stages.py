"""Seconds per clip of each embedded annotation stage, and seconds per frame of the production models at their real
sizes with random weights (FLOPs do not depend on the values: docs/design.md, "Backends").

    .venv/bin/python -m bench.stages                      # 16 default-world clips + the heavy models on this CPU
    .venv/bin/python -m bench.stages --skip-heavy         # the embedded stages only (~20 s)
    .venv/bin/python -m bench.stages --device cuda --dtype bfloat16 --heavy-frames 10   # the heavy models on a GPU

Prints one JSON object. Figures are timings, never asserted anywhere (docs/design.md, "Performance"): compare them as
ratios within one run, on one machine. The heavy models run through the project's own stage code where it takes an
injected model (SAM: `SamSegmenter`, CLIP: `ClipEncoder`); Grounding DINO is called as its stage's `_forward` calls
it (the stage only loads from a weights dir, and a 172 M-parameter save would dominate the run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/stages.py`: the script's folder comes first on sys.path, where bench/annotate.py would shadow
# the `annotate` package, so the repository root takes its place.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402

from annotate.config import AnnotateConfig
from annotate.pipeline import STAGE_NAMES, ClipAnnotator, make_item
from annotate.synthetic import WorldParams, make_clip, params_dict
from pipelines.synth import write_clip

DTYPES = ("float32", "float16", "bfloat16")
# Grounding DINO's prompt: BERT-base-uncased ids of "a red ball. a blue cup. a green kite." with [CLS]/[SEP].
# The ids matter only for the model's text masks ("." = 1012 separates phrases); the weights are random anyway.
GDINO_PROMPT_IDS = [101, 1037, 2417, 3608, 1012, 1037, 2630, 6210, 1012, 1037, 2665, 20497, 1012, 102]
GDINO_FRAME_HW = (720, 1280)  # an HD frame; the processor resizes it to 750 x 1333 (shortest 800, longest 1333)
SAM_SIDE = 1024  # SAM's own input size: set_image on a 1024 x 1024 frame does no resize
SAM_BOXES = [[100, 120, 400, 460], [500, 200, 820, 640], [300, 600, 700, 980]]  # 3 box prompts, one batched call


# --- embedded stages --------------------------------------------------------------------------------------------


def bench_embedded(n_clips: int, seed: int) -> dict:
    """Each stage's seconds per clip on n default-world clips, one clip per call (as `pite annotate-clip` runs)."""
    params = WorldParams()
    cfg = AnnotateConfig()  # the embedded defaults: given / grabcut / lk / thumbnail
    with tempfile.TemporaryDirectory(prefix="pite-bench-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        rows = [write_clip(make_clip(seed, i, params), out, params) for i in range(n_clips)]
        make_s = time.perf_counter() - t0
        annotator = ClipAnnotator(cfg)
        setup_s = {}
        for stage in annotator.stages:
            t0 = time.perf_counter()
            stage.setup()
            stage._ready = True
            setup_s[stage.name] = round(time.perf_counter() - t0, 4)
        per_stage = {name: [] for name in STAGE_NAMES}
        totals, objects, rejects = [], [], []
        for i, r in enumerate(rows):
            item = make_item(i, r["video_id"], str(out / r["video"]), r["caption"], cfg.seed, events=r["events"],
                             boxes=r["boxes"], gt=str(out / r["gt"]))
            t0 = time.perf_counter()
            annotator.annotate([item])
            totals.append(time.perf_counter() - t0)
            if not item.ok:
                rejects.append({"video_id": item.video_id, "stage": item.error[0], "error": item.error[1]})
                continue
            objects.append(len(item.groundings))
            for name in STAGE_NAMES:
                per_stage[name].append(item.timings[name])
    return {
        "clips": n_clips,
        "world": {k: params_dict(params)[k] for k in ("width", "height", "frames", "fps")} | {"seed": seed},
        "backends": {"ground": cfg.ground.backend, "segment": cfg.segment.backend, "track": cfg.track.backend,
                     "features": cfg.features.backend},
        "seconds_per_clip": {name: _summary(v) for name, v in per_stage.items()},
        "seconds_per_clip_all_stages": _summary(totals),
        "setup_seconds": setup_s,
        "make_clip_seconds_per_clip": round(make_s / max(1, n_clips), 4),
        "objects_per_clip": round(float(np.mean(objects)), 3) if objects else 0.0,
        "rejected": rejects,
    }


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {"mean": round(statistics.fmean(values), 5), "median": round(statistics.median(values), 5),
            "min": round(min(values), 5), "max": round(max(values), 5)}


# --- heavy models -----------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _per_frame(calls: list[float], frames_per_call: int) -> dict:
    """The first call pays one-off costs (allocator, kernel choice): report it apart from the steady state."""
    steady = calls[1:] or calls
    return {"first_call_s": round(calls[0], 4), "per_frame_s": round(statistics.fmean(steady) / frames_per_call, 4),
            "calls_timed": len(calls), "frames_per_call": frames_per_call,
            "per_frame_from": "calls after the first" if len(calls) > 1 else "the only call (includes warm-up)"}


def _params_m(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


def bench_grounding_dino(device: str, dtype: str, calls: int) -> dict:
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoImageProcessor

    torch.manual_seed(0)
    t0 = time.perf_counter()
    config = GroundingDinoConfig()  # the defaults are grounding-dino-tiny: Swin-T, BERT-base, 900 queries
    tdtype = getattr(torch, dtype)
    model = GroundingDinoForObjectDetection(config).to(device, tdtype).eval()
    build_s = time.perf_counter() - t0
    processor = GroundingDinoImageProcessor()  # shortest edge 800, longest 1333, as the released processor
    frame = np.random.default_rng(0).integers(0, 256, (*GDINO_FRAME_HW, 3), dtype=np.uint8)
    prep_s, pixels = _timed(lambda: processor(images=[frame], return_tensors="pt"), "cpu")
    ids = torch.tensor([GDINO_PROMPT_IDS], device=device)
    inputs = dict(pixel_values=pixels["pixel_values"].to(device, tdtype), pixel_mask=pixels["pixel_mask"].to(device),
                  input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.ones_like(ids))

    def forward():
        with torch.inference_mode():
            out = model(**inputs)
        return out.logits.float().cpu(), out.pred_boxes.float().cpu()  # as GroundingDinoGrounder._forward

    times = [_timed(forward, device)[0] for _ in range(calls)]
    result = {
        "model": "GroundingDinoForObjectDetection(GroundingDinoConfig()) = grounding-dino-tiny size (Swin-T)",
        "params_m": _params_m(model),
        "input": f"{GDINO_FRAME_HW[0]}x{GDINO_FRAME_HW[1]} frame -> pixel_values {list(pixels['pixel_values'].shape)}"
                 f", prompt of {len(GDINO_PROMPT_IDS)} tokens (3 phrases), batch 1",
        "build_s": round(build_s, 3),
        "preprocess_s": round(prep_s, 4),
        **_per_frame(times, 1),
    }
    del model, inputs
    return result


def bench_sam(device: str, dtype: str, calls: int) -> dict:
    import torch
    from segment_anything import sam_model_registry

    from annotate.segment import SamSegmenter

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = sam_model_registry["vit_b"](checkpoint=None)
    cfg = AnnotateConfig()
    cfg.segment.backend, cfg.segment.device = "sam", device
    seg = SamSegmenter.from_model(cfg, model)
    seg.setup()
    build_s = time.perf_counter() - t0
    encode_times = []
    set_image = seg.predictor.set_image

    def timed_set_image(*a, **kw):  # the image encoder's share of a call
        dt, _ = _timed(lambda: set_image(*a, **kw), device)
        encode_times.append(dt)

    seg.predictor.set_image = timed_set_image
    frame = np.random.default_rng(0).integers(0, 256, (SAM_SIDE, SAM_SIDE, 3), dtype=np.uint8)
    boxes = [np.asarray(b, np.float64) for b in SAM_BOXES]
    rects = [tuple(int(v) for v in b) for b in SAM_BOXES]
    # segment-anything has no dtype switch: half precision on a GPU goes through autocast.
    autocast = dtype != "float32" and device.startswith("cuda")

    def call():
        with torch.autocast("cuda", dtype=getattr(torch, dtype), enabled=autocast):
            return seg.segment_frame(frame, boxes, rects)

    times = []
    for _ in range(calls):
        dt, masks = _timed(call, device)
        times.append(dt)
    assert len(masks) == 3 and masks[0].shape == (SAM_SIDE, SAM_SIDE)
    predict = [t - e for t, e in zip(times, encode_times)]  # the mask decoder on 3 boxes + bookkeeping
    result = {
        "model": "segment_anything sam_model_registry['vit_b'](checkpoint=None) via annotate.segment.SamSegmenter",
        "params_m": _params_m(model),
        "input": f"{SAM_SIDE}x{SAM_SIDE} frame, 3 boxes in one batched predict_torch, multimask best-of-3",
        "precision": f"autocast {dtype}" if autocast else "float32",
        "build_s": round(build_s, 3),
        **_per_frame(times, 1),
        "set_image_s": _per_frame(encode_times, 1)["per_frame_s"],
        "predict_3_boxes_s": round(statistics.fmean(predict[1:] or predict), 4),
    }
    del seg, model
    return result


def bench_clip(device: str, dtype: str, calls: int, batch: int) -> dict:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from annotate.features import ClipEncoder

    torch.manual_seed(0)
    t0 = time.perf_counter()
    # openai/clip-vit-large-patch14's vision tower and projection.
    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(config)
    encoder = ClipEncoder(model, CLIPImageProcessor(), crop="center", batch_size=batch, device=device, dtype=dtype,
                          name="random ViT-L/14")
    build_s = time.perf_counter() - t0
    frames = np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    times = []
    for _ in range(calls):
        dt, emb = _timed(lambda: encoder(frames), device)
        times.append(dt)
    assert emb.shape == (batch, 768)
    result = {
        "model": "CLIPVisionModelWithProjection, ViT-L/14 config (24 layers, width 1024, patch 14, proj 768) "
                 "via annotate.features.ClipEncoder",
        "params_m": _params_m(model),
        "input": f"{batch} frame(s) of 256x256 per call -> CLIPImageProcessor centre crop 224x224",
        "build_s": round(build_s, 3),
        **_per_frame(times, batch),
    }
    del encoder, model
    return result


def bench_heavy(device: str, dtype: str, calls: int, clip_batch: int) -> dict:
    import torch

    out = {"device": device, "dtype": dtype, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "weights": "random (real architectures and sizes: the FLOPs of the real models)"}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for name, fn in (("grounding_dino_swin_t", lambda: bench_grounding_dino(device, dtype, calls)),
                     ("sam_vit_b", lambda: bench_sam(device, dtype, calls)),
                     ("clip_vit_l14", lambda: bench_clip(device, dtype, calls, clip_batch))):
        out[name] = fn()
        gc.collect()  # one big model in memory at a time
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=16, help="synthetic clips for the embedded stages (default 16)")
    ap.add_argument("--seed", type=int, default=1, help="world seed of those clips")
    ap.add_argument("--skip-embedded", action="store_true", help="only the heavy models")
    ap.add_argument("--skip-heavy", action="store_true", help="only the embedded stages")
    ap.add_argument("--heavy-frames", type=int, default=2,
                    help="calls per heavy model (default 2: the first is reported apart as warm-up; tens of "
                         "seconds each on a laptop CPU)")
    ap.add_argument("--clip-batch", type=int, default=1, help="frames per CLIP call (the stage's batch_size)")
    ap.add_argument("--device", default="cpu", help="torch device for the heavy models, e.g. cuda or cuda:1")
    ap.add_argument("--dtype", default="float32", choices=DTYPES, help="heavy models' precision (GPU: bfloat16)")
    args = ap.parse_args(argv)
    if args.clips < 1 or args.heavy_frames < 1 or args.clip_batch < 1:
        ap.error("--clips, --heavy-frames and --clip-batch must be >= 1")
    report = {"host": {"python": platform.python_version(), "machine": platform.machine(),
                       "cpus": os.cpu_count()}}
    if not args.skip_embedded:
        report["embedded"] = bench_embedded(args.clips, args.seed)
    if not args.skip_heavy:
        report["heavy"] = bench_heavy(args.device, args.dtype, args.heavy_frames, args.clip_batch)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
