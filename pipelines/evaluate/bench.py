"""The synthetic benchmark behind `make eval`: every `pite evaluate` metric, end to end on CPU, on held-out clips.

    python -m pipelines.evaluate.bench --checkpoint runs/train/demo/final [--heldout runs/annotate/demo-heldout]
                                   [--train-data runs/annotate/demo] [--out runs/eval/demo]

1. The held-out run (synthetic clips never trained on: their own seed and ids, annotated by the demo pipeline) is
   made when missing, exactly as the trainer's held-out check makes it.
2. Its events and features are exported in the public layouts (OUT/data/grounding.json in ActivityNet/VTimeLLM
   form, OUT/data/features/ID.npy), so the benchmark runs through the same code as Charades-STA/ActivityNet.
3. Temporal grounding, dense captioning and trajectory accuracy are evaluated (OUT/<task>/metrics.json and
   items.jsonl) with baselines that look at no video: random, constant, and the training set's mean.
4. OUT/trajectories.png shows predicted vs ground-truth trajectories on a held-out clip; OUT/summary.json and the
   printed table hold the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from annotate.errors import ConfigError, PiteError
from pipelines.evaluate import metrics as M
from pipelines.evaluate import tasks as E
from pipelines.evaluate.data import load_temporal_annotations
from pipelines.train.config import EvalSettings
from pipelines.evaluate.heldout import ensure_heldout


def _samples(run: Path):
    from pipelines.shards import iter_samples, list_done_shards, shard_paths

    for i in list_done_shards(run):
        yield from iter_samples(shard_paths(run, i)["tar"])


def export_public(run: Path, out: Path) -> tuple[Path, Path]:
    """(grounding.json, features dir) from a run's samples with events, in VTimeLLM's eval layout."""
    feats = out / "features"
    feats.mkdir(parents=True, exist_ok=True)
    ann = {}
    for s in _samples(run):
        events = s.meta.get("events") or []
        if not events or not s.meta.get("duration"):
            continue
        vid = s.key
        np.save(feats / f"{vid}.npy", s.feat, allow_pickle=False)
        ann[vid] = {"duration": s.meta["duration"], "timestamps": [[e["start"], e["end"]] for e in events],
                    "sentences": [e["text"] for e in events]}
    if not ann:
        raise ConfigError(f"--heldout: {run} has no sample with events")
    path = out / "grounding.json"
    path.write_text(json.dumps(ann, indent=1))
    return path, feats


def train_means(run: Optional[Path]) -> tuple[Optional[np.ndarray], Optional[tuple[int, int]]]:
    """The training set's mean trajectory (K, T, 2) over visible points and mean event span (frame indices)."""
    if run is None or not run.is_dir():
        return None, None
    total = count = None
    starts, ends = [], []
    for s in _samples(run):
        traj, vis = s.traj.astype(np.float64), s.vis[..., None]
        if traj.shape[0]:
            t, c = (traj * vis).sum(0), vis.sum(0).astype(np.float64)
            total, count = (t, c) if total is None else (total + t, count + c)
        for e in s.meta.get("events") or []:
            if s.meta.get("duration"):
                starts.append(e["start"] / s.meta["duration"])
                ends.append(e["end"] / s.meta["duration"])
    mean = None
    if total is not None:
        overall = total.sum((0, 1)) / max(1.0, count.sum())
        mean = np.where(count > 0, total / np.maximum(count, 1), overall)
    span = (min(99, round(100 * np.mean(starts))), min(99, round(100 * np.mean(ends)))) if starts else None
    return mean, span


def draw_comparison(run: Path, pred: np.ndarray, sample, phrases: list[str], out: Path, tiles: int = 5) -> Path:
    """Two rows of frames of one held-out clip: ground-truth tracks on top, predicted trajectories below."""
    import cv2

    from annotate.draw import encode_png, grid
    from pipelines.viz import decode_at, draw_tracks, video_of

    frames = decode_at(video_of(run, sample.meta["video_id"]), sample.meta["frame_indices"], max_side=256)
    names = [o["phrase"] for o in sample.meta["objects"]]
    keep = [names.index(p) for p in phrases]  # the predicted phrases' rows in the sample
    gt = draw_tracks(frames, sample.traj[keep].astype(np.float32), sample.vis[keep], labels=phrases)
    pr = draw_tracks(frames, pred, None, labels=phrases)
    picks = np.round(np.linspace(0, len(frames) - 1, tiles)).astype(int)
    for row, title in ((gt, "ground truth"), (pr, "predicted")):
        for t in picks:
            cv2.putText(row[t], f"{title} t={t}", (4, row[t].shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (255, 255, 255), 1, cv2.LINE_AA)
    out.write_bytes(encode_png(grid([gt[t] for t in picks] + [pr[t] for t in picks], cols=tiles)))
    return out


def run_bench(args) -> dict:
    from pipelines.infer import Predictor

    out = Path(args.out)
    # made when missing exactly as the trainer's held-out check makes it
    heldout = ensure_heldout(EvalSettings(data=args.heldout, synth_seed=args.synth_seed, synth_n=args.synth_n,
                                          synth_start=args.synth_start, synth_out=args.synth_out,
                                          annotate_config=args.annotate_config))
    ann_path, feats = export_public(heldout, out / "data")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    answer = E.model_answers(predictor, batch_size=args.batch_size, max_new_tokens=64)
    mean_traj, mean_span = train_means(Path(args.train_data) if args.train_data else None)
    ann = load_temporal_annotations(ann_path)

    grounding = E.run_grounding(answer, ann, feats)
    if mean_span is not None:
        items, _ = E.grounding_items(ann, feats)
        text = f"From {mean_span[0]:02d} to {mean_span[1]:02d}."
        grounding["baselines"][f"train mean ({text[5:-1]})"] = E.score_grounding(items, [text] * len(items))[0]
    E.write_result(grounding, out / "grounding")

    # The demo answers "From 00 to 17, text. From ...", which VTimeLLM's parser does not read: the project's
    # parser, named in captioning/metrics.json.
    captioning = E.run_captioning(E.model_answers(predictor, args.batch_size, 160), ann, feats, parse="project")
    E.write_result(captioning, out / "captioning")

    m = predictor.model
    trajectory = E.run_trajectory(m, predictor.tokenizer, predictor.template, heldout)
    if mean_traj is not None and mean_traj.shape == (m.config.n_points, m.config.n_frames, 2):
        sums = [M.trajectory_errors(np.broadcast_to(mean_traj, target.shape), target, mask)
                for _, _, _, target, mask in E.trajectory_predictions(m, predictor.tokenizer, predictor.template,
                                                                       heldout)]
        trajectory["baselines"]["train mean"] = M.trajectory_summary(sums)
    E.write_result(trajectory, out / "trajectory")

    sample, phrases, pred, _, _ = next(E.trajectory_predictions(m, predictor.tokenizer, predictor.template, heldout))
    picture = draw_comparison(heldout, pred, sample, phrases, out / "trajectories.png")

    rows = [("grounding R1@0.5", grounding, "R1@0.5", True), ("grounding mIoU", grounding, "mIoU", True),
            ("trajectory L1", trajectory, "L1", False), ("trajectory delta_avg", trajectory, "delta_avg", True)]
    summary = {"checkpoint": str(args.checkpoint), "heldout": str(heldout), "figures": {},
               "captioning": {k: v for k, v in captioning["metrics"].items() if k in ("CIDEr", "METEOR", "SODA_c")},
               "picture": str(picture)}
    for name, result, key, higher in rows:
        model = result["metrics"][key]
        base = {b: v[key] for b, v in result["baselines"].items()}
        beats = all((model > v) if higher else (model < v) for v in base.values())
        summary["figures"][name] = {"model": model, "baselines": base, "beats_all_baselines": beats}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"held-out synthetic benchmark ({summary['heldout']}) with {summary['checkpoint']}", ""]
    for name, f in summary["figures"].items():
        base = "  ".join(f"{b} {v:.3f}" for b, v in f["baselines"].items())
        mark = "beats every baseline" if f["beats_all_baselines"] else "does NOT beat every baseline"
        lines.append(f"  {name:<22} {f['model']:8.3f}   baselines: {base}   -> {mark}")
    for k, v in summary["captioning"].items():
        lines.append(f"  captioning {k:<11} {v:8.3f}" if isinstance(v, float) else f"  captioning {k:<11} {v}")
    lines += ["", f"predicted vs ground-truth trajectories: {summary['picture']}"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.evaluate.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/train/demo/final")
    ap.add_argument("--heldout", default="runs/annotate/demo-heldout", help="held-out annotation run")
    ap.add_argument("--train-data", default="runs/annotate/demo", help="training run (for the mean baselines)")
    ap.add_argument("--out", default="runs/eval/demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--synth-out", default="data/synth-demo-heldout")
    ap.add_argument("--synth-seed", type=int, default=1000)
    ap.add_argument("--synth-start", type=int, default=1000)
    ap.add_argument("--synth-n", type=int, default=64)
    ap.add_argument("--annotate-config", default="configs/annotate/demo.yaml")
    args = ap.parse_args(argv)
    try:
        if not (Path(args.checkpoint) / "pite.json").is_file():
            raise ConfigError(f"--checkpoint: {args.checkpoint} is not a checkpoint (run `make train` first)")
        summary = run_bench(args)
    except PiteError as exc:
        print(f"eval_bench: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
