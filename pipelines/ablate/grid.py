"""One run per (variant, seed): train the variant's config with that seed, evaluate its final checkpoint on the fixed
held-out clips, append one line to results.jsonl.

    OUT/results.jsonl                 {"variant", "seed", "figures": {...}, "train_seconds", "eval_seconds", ...}
    OUT/runs/<variant>/seed-<S>/      train.yaml, the trainer's output (stages, final/), eval/ (bench mode)

Training and evaluation run as subprocesses (`python -m pipelines.train`, `python -m pipelines.evaluate.bench`), so
each run starts from a clean interpreter and its memory goes back when it ends. The trainer continues what its
`out` holds, so a killed grid continues its interrupted run from the newest step checkpoint, and a finished run is
skipped because its line is in results.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import yaml

from annotate.errors import PiteError
from pipelines.ablate.config import AblationConfig, resolve_out, variant_train_config


class RunFailed(PiteError):
    """A run's training or evaluation exited non-zero (its log says why)."""


def done_runs(results: Path) -> set[tuple[str, int]]:
    if not results.is_file():
        return set()
    return {(r["variant"], int(r["seed"])) for r in map(json.loads, results.read_text().splitlines()) if r}


def run_dir(cfg: AblationConfig, variant: str, seed: int) -> Path:
    return resolve_out(cfg) / "runs" / variant / f"seed-{seed}"


def flatten_figures(eval_dir: Path) -> dict[str, float]:
    """`make eval`'s figures from the bench's per-task metrics.json: grounding R1@0.3/0.5/0.7 and mIoU, trajectory
    L1 and delta_avg, captioning CIDEr (and METEOR / SODA_c when they were computed)."""
    figures = {}
    for task, keys in (("grounding", ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")), ("trajectory", ("L1", "delta_avg")),
                       ("captioning", ("CIDEr", "METEOR", "SODA_c"))):
        metrics = json.loads((eval_dir / task / "metrics.json").read_text())["metrics"]
        for key in keys:
            if isinstance(metrics.get(key), (int, float)):
                figures[f"{task}_{key}"] = float(metrics[key])
    return figures


def heldout_figures(out: Path) -> dict[str, float]:
    """The trainer's held-out trajectory check (OUT/eval.json)."""
    result = json.loads((out / "eval.json").read_text())
    return {k: float(result[k]) for k in ("traj_l1", "traj_l1_baseline", "ratio_to_baseline")}


def _call(cmd: list[str], log: Path, what: str) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RunFailed(f"{what} exited {rc}: see {log}")
    return time.perf_counter() - t0


def run_one(cfg: AblationConfig, variant: str, seed: int, say: Callable[[str], None]) -> dict:
    """Train and evaluate one (variant, seed); returns its results line."""
    out = run_dir(cfg, variant, seed)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "train.yaml"
    config.write_text(yaml.safe_dump(variant_train_config(cfg, variant), sort_keys=False))
    train_cmd = [sys.executable, "-m", "pipelines.train", "--config", str(config), f"out={out / 'train'}",
                 f"name={cfg.name}-{variant}-{seed}", f"seed={seed}", "progress=false",
                 "tensorboard=false", *cfg.overrides, *cfg.variants[variant].overrides]
    say(f"ablate: {variant} seed {seed}: training ({out / 'train.log'})")
    train_s = _call(train_cmd, out / "train.log", f"{variant} seed {seed}: training")
    eval_s = 0.0
    if cfg.evaluate == "bench":
        say(f"ablate: {variant} seed {seed}: evaluating")
        eval_cmd = [sys.executable, "-m", "pipelines.evaluate.bench", "--checkpoint", str(out / "train" / "final"),
                    "--out", str(out / "eval"), *cfg.eval_args]
        eval_s = _call(eval_cmd, out / "eval.log", f"{variant} seed {seed}: evaluation")
        figures = flatten_figures(out / "eval")
    else:
        figures = heldout_figures(out / "train")
    return {"variant": variant, "seed": seed, "figures": figures, "train_seconds": round(train_s, 1),
            "eval_seconds": round(eval_s, 1), "wall_seconds": round(train_s + eval_s, 1), "dir": str(out)}


def run_grid(cfg: AblationConfig, say: Callable[[str], None] = print) -> Path:
    """Every (variant, seed) not yet in results.jsonl, seed-major (so a cut grid has whole seeds first)."""
    out = resolve_out(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    results = out / "results.jsonl"
    done = done_runs(results)
    todo = [(v, s) for s in cfg.seeds for v in cfg.variants if (v, s) not in done]
    say(f"ablate: {len(cfg.variants)} variants x {len(cfg.seeds)} seeds, {len(todo)} run(s) to do, "
        f"{len(cfg.variants) * len(cfg.seeds) - len(todo)} done earlier")
    for variant, seed in todo:
        line = run_one(cfg, variant, seed, say)
        with open(results, "a") as f:
            f.write(json.dumps(line) + "\n")
        say(f"ablate: {variant} seed {seed} done in {line['wall_seconds']:.0f} s")
    return results
