"""SAM 3 grounding under bfloat16 autocast against float32, at the published size with random weights: what
`ground.dtype: auto` changes on a GPU, measured here on the CPU (the same autocast rules).

    .venv/bin/python bench/parity_sam3.py --weights runs/realsize/weights-real/sam3-recipe/sam3

One synthetic 1280x720 frame and its caption's phrases go through `Sam3Grounder`'s own path (vision features once,
text once, the heads per phrase) twice: ground.dtype float32, then bfloat16. Printed (JSON): per (frame, phrase)
row the score of every query (sigmoid(logit) x sigmoid(presence)) compared, the best query's box in pixels, and
the IoU of the best query's mask at the frame's size, plus seconds per pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def run(weights: str, dtype: str, frame: np.ndarray, phrases: list[str]) -> tuple[dict, float]:
    """Scores (rows, Q), boxes (rows, Q, 4) in [0, 1] and the best query's mask per row, at `dtype`."""
    import torch

    from annotate.config import AnnotateConfig
    from annotate.ground import Sam3Grounder
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    cfg = AnnotateConfig()
    cfg.ground.backend, cfg.ground.weights, cfg.ground.dtype, cfg.ground.device = "sam3", weights, dtype, "cpu"
    g = Sam3Grounder(cfg)
    g.setup()
    t0 = time.perf_counter()
    embeds, mask = g._text_features(phrases)
    pixels = g.processor.image_processor(images=[frame], return_tensors="pt")["pixel_values"]
    with torch.inference_mode(), g._autocast():
        vision = g.model.get_vision_features(pixel_values=pixels)
        rows = torch.zeros(len(phrases), dtype=torch.long)
        out = g.model(vision_embeds=type(vision)(
            last_hidden_state=vision.last_hidden_state[rows],
            fpn_hidden_states=tuple(x[rows] for x in vision.fpn_hidden_states),
            fpn_position_encoding=tuple(x[rows] for x in vision.fpn_position_encoding)),
            text_embeds=BaseModelOutputWithPooling(pooler_output=embeds), attention_mask=mask)
    seconds = time.perf_counter() - t0
    scores = (torch.sigmoid(out.pred_logits.float()) * torch.sigmoid(out.presence_logits.float())).numpy()
    best = scores.argmax(axis=1)
    from annotate.ground.sam3 import mask_at

    h, w = frame.shape[:2]
    masks = [mask_at(out.pred_masks[r, q].float(), h, w) for r, q in enumerate(best)]
    return {"scores": scores, "boxes": out.pred_boxes.float().numpy(), "best": best, "masks": masks}, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="a SAM 3 dir (pite weights random --size real --recipe sam3)")
    args = ap.parse_args(argv)
    import torch

    from annotate.synthetic import WorldParams, make_clip

    torch.manual_seed(0)
    clip = make_clip(3, 0, WorldParams(width=1280, height=720, frames=4))
    frame, phrases = clip.frames[0], [o["phrase"] for o in clip.objects]
    ref, s32 = run(args.weights, "float32", frame, phrases)
    got, s16 = run(args.weights, "bfloat16", frame, phrases)
    h, w = frame.shape[:2]
    box_px = np.abs(ref["boxes"] - got["boxes"]) * np.array([w, h, w, h])
    rows = np.arange(len(phrases))
    best_box_px = box_px[rows, ref["best"]]
    ious = [float((a & b).sum() / max(1, (a | b).sum())) for a, b in zip(ref["masks"], got["masks"])]
    print(json.dumps({
        "frame": f"{w}x{h}", "phrases": phrases, "queries": int(ref["scores"].shape[1]),
        "score_abs_diff": {"mean": float(np.abs(ref["scores"] - got["scores"]).mean()),
                           "max": float(np.abs(ref["scores"] - got["scores"]).max())},
        "box_px_diff_all_queries": {"p99": float(np.quantile(box_px, 0.99)), "max": float(box_px.max())},
        "best_query_same": int((ref["best"] == got["best"]).sum()), "rows": len(phrases),
        "best_box_px_diff_max": float(best_box_px.max()),
        "best_mask_iou": [round(v, 4) for v in ious],
        "seconds": {"float32": round(s32, 1), "bfloat16": round(s16, 1)},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
