"""Held-out trajectory evaluation of a trained checkpoint: the issue's check, written to OUT/eval.json.

    python -m pipelines.train_eval --checkpoint runs/train/demo/final --data runs/annotate/demo-heldout \
        --train-data runs/annotate/demo [--out runs/train/demo/eval.json]

For every held-out clip the caption is teacher-forced (the stage-2 conversation, first caption query) and the
trajectory head is read at each object's phrase's last token (model.labels' readout rule). The error is the
mean absolute error of normalised coordinates (mean over x and y) over visible points, for
  traj_l1            the model,
  traj_l1_baseline   a constant: the training set's mean trajectory (per point k and frame t, visible points),
  traj_l1_clip_mean  an oracle that knows each held-out object's mean position over its clip.
Beating the constant needs the model to find the object in the frames; beating the oracle needs it to follow it.

When the held-out run is missing and its config says how, it is made first: `synth_n` clips at `synth_seed`
(ids from `synth_start`, so they never collide with the training ids) annotated with `annotate_config`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from annotate.errors import ConfigError, PiteError
from model.batch import collate, to_device
from model.checkpoint import load_checkpoint
from model.config import LabelConfig
from model.labels import build_examples
from pipelines.shards import iter_samples
from pipelines.train.data import run_shards


def mean_trajectory(run_dir: str | Path) -> np.ndarray:
    """(K, T, 2) mean of the visible points of every object of a run, per point and frame (the constant)."""
    total = count = None
    for tar in run_shards(run_dir, key="train data"):
        for s in iter_samples(tar):
            traj, vis = s.traj.astype(np.float64), s.vis[..., None]
            t = (traj * vis).sum(0)
            c = vis.sum(0).astype(np.float64)
            total, count = (t, c) if total is None else (total + t, count + c)
    if total is None:
        raise ConfigError(f"train data: {run_dir} has no objects to average")
    # A (k, t) never seen visible falls back to the overall mean.
    overall = total.sum((0, 1)) / max(1.0, count.sum())
    return np.where(count > 0, total / np.maximum(count, 1), overall).astype(np.float32)


def _l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    err = (pred.float() - target.float()).abs().mean(-1)
    return float(err[mask].sum()), int(mask.sum())


@torch.no_grad()
def evaluate(model, tokenizer, template, heldout_dir: str | Path, constant: np.ndarray, batch_size: int = 8,
             device: str | torch.device = "cpu", autocast: bool = False) -> dict:
    """The three L1 figures over every visible point of every supervised held-out phrase."""
    model.eval()
    labels = LabelConfig(stage=2, max_length=1 << 20)
    examples = []
    for tar in run_shards(heldout_dir, key="eval.data"):
        for s in iter_samples(tar):
            exs, _ = build_examples(s, tokenizer, template, model.video_token_id, labels, rng=None)
            examples += exs
    if not examples:
        raise ConfigError(f"eval.data: {heldout_dir} gives no stage-2 example (no objects?)")
    const = torch.from_numpy(constant)
    sums = {"model": 0.0, "constant": 0.0, "oracle": 0.0}
    points = objects = 0
    device = torch.device(device)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch = to_device(collate(chunk, tokenizer.pad_token_id), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(**batch)
        target, mask = batch["traj_target"].cpu(), batch["traj_mask"].cpu()
        if out.traj_pred is None or out.traj_pred.shape != target.shape:
            raise ConfigError(f"checkpoint: trajectory head gives {None if out.traj_pred is None else tuple(out.traj_pred.shape)}"
                              f", the held-out targets are {tuple(target.shape)} (n_points/n_frames)")
        s, n = _l1(out.traj_pred.cpu(), target, mask)
        sums["model"] += s
        sums["constant"] += _l1(const.expand_as(target), target, mask)[0]
        # The oracle: each object's mean visible position over its clip, at every point and frame.
        w = mask[..., None].float()
        centre = (target * w).sum((1, 2), keepdim=True) / w.sum((1, 2), keepdim=True).clamp(min=1)
        sums["oracle"] += _l1(centre.expand_as(target), target, mask)[0]
        points += n
        objects += int(mask.flatten(1).any(1).sum())
    keys = {e.key for e in examples}
    model_l1, base_l1 = sums["model"] / max(1, points), sums["constant"] / max(1, points)
    return {"traj_l1": model_l1, "traj_l1_baseline": base_l1, "traj_l1_clip_mean": sums["oracle"] / max(1, points),
            "ratio_to_baseline": model_l1 / base_l1 if base_l1 else float("nan"),
            "clips": len(keys), "objects": objects, "visible_points": points}


def ensure_heldout(eval_cfg, log=print) -> Path:
    """The held-out run dir; synthesised and annotated first (in subprocesses) when it does not exist."""
    run = Path(eval_cfg.data)
    if (run / "stats.json").is_file():
        return run
    if not eval_cfg.synth_out:
        raise ConfigError(f"eval.data: {run} is not a finished annotation run (no stats.json); annotate held-out "
                          "clips there, or set eval.synth_out to have them synthesised")
    synth_out = Path(eval_cfg.synth_out)
    manifest = synth_out / "manifest.jsonl"
    if not manifest.is_file():
        log(f"eval: synthesising {eval_cfg.synth_n} held-out clips (seed {eval_cfg.synth_seed}) into {synth_out}")
        subprocess.run([sys.executable, "-m", "pipelines.synth", "--n", str(eval_cfg.synth_n), "--seed",
                        str(eval_cfg.synth_seed), "--start", str(eval_cfg.synth_start), "--out", str(synth_out),
                        "--workers", str(os.cpu_count() or 1)],
                       check=True)
    log(f"eval: annotating them into {run} with {eval_cfg.annotate_config}")
    subprocess.run([sys.executable, "-m", "pipelines.annotate", "--config", str(eval_cfg.annotate_config),
                    f"input={manifest}", f"out={run}", "synth.n=0", "progress=false"], check=True)
    return run


def evaluate_run(cfg, out: Path, device: str | torch.device = "cpu") -> dict:
    """After training: evaluate OUT/final on cfg.eval.data and write OUT/eval.json (with the final losses)."""
    heldout = ensure_heldout(cfg.eval)
    model, tokenizer, template = load_checkpoint(out / "final", device=str(device), dtype=cfg.base.dtype)
    train_dirs = list(dict.fromkeys(s.data or cfg.data for s in cfg.stages if s.labels.stage == 2)) or [cfg.data]
    constant = mean_trajectory(train_dirs[0])
    result = evaluate(model, tokenizer, template, heldout, constant, cfg.eval.batch_size, device,
                      autocast=torch.device(device).type == "cuda")
    result.update({"checkpoint": str(out / "final"), "heldout": str(heldout), "train_data": train_dirs[0]})
    train = json.loads((out / "train.json").read_text()) if (out / "train.json").is_file() else {}
    result["final_losses"] = {name: s.get("last") for name, s in train.get("stages", {}).items()}
    result["first_losses"] = {name: s.get("first") for name, s in train.get("stages", {}).items()}
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate.heldout", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="held-out annotation run dir")
    p.add_argument("--train-data", required=True, help="training annotation run dir (for the constant baseline)")
    p.add_argument("--out", help="write the figures here as JSON")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        model, tokenizer, template = load_checkpoint(args.checkpoint, device=args.device)
        result = evaluate(model, tokenizer, template, args.data, mean_trajectory(args.train_data),
                          device=args.device)
    except PiteError as exc:
        print(f"heldout: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
