"""`pite train`: train PiTe on annotation shards, stage after stage.

    pite train --config configs/train/demo.yaml [data=RUN_DIR] [out=DIR] [key=value ...]
    torchrun --nproc-per-node 8 -m pipelines.train --config configs/train/stage2-7b.yaml init_from=...
    ray job submit --working-dir . -- python -m pipelines.train --config CONFIG launcher=ray num_workers=8 \
        data=/shared/run out=/shared/ckpt        # absolute paths every node sees (runs/ is not uploaded)

A config lists its stages (configs/train/*.yaml); each writes OUT/<stage>/ (a PiTe checkpoint, metrics.jsonl,
tb/, checkpoints/step-N/) and the last one is copied to OUT/final, what `pite infer --checkpoint` takes. A stage
starts from the previous stage's dir (its LoRA merged, heads carried), the first from `init_from` or the base LLM.

This module is the run (every stage in order, OUT/final, the held-out check) and its launchers: one process,
torchrun, Ray Train. One stage is pipelines/train/recipe.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from annotate.errors import PiteError
from pipelines.config import parse_cli, save_config, to_dict
from pipelines.train.config import TrainConfig, load_train_config, resolve_out
from pipelines.train.dist import Dist, close, local_dist, ray_worker_dist
from pipelines.train.recipe import CHECKPOINT_ENTRIES, StageRecipe, StoppedEarly
from pipelines.train.resume import (check_out, fresh_start, has_progress, run_finished, stage_done,
                                    where_it_stands)

log = logging.getLogger("pite.train")


# ---- the run --------------------------------------------------------------------------------------------------


def publish_final(stage_dir: Path, final: Path) -> Path:
    """OUT/final: a copy of the last stage's checkpoint files (not its logs or resumable states)."""
    tmp = final.with_name(".final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in CHECKPOINT_ENTRIES:
        src = stage_dir / name
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        elif src.is_file():
            shutil.copy2(src, tmp / name)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def summarise(history: list[dict]) -> dict:
    keys = ("loss", "lm_loss", "loc_loss", "traj_loss")
    if not history:
        return {}
    return {"steps": history[-1]["step"], "first": {k: history[0][k] for k in keys},
            "last": {k: history[-1][k] for k in keys},
            "seconds": round(sum(r.get("seconds", 0.0) for r in history), 2)}


def run(cfg: TrainConfig, dist: Dist) -> dict:
    """Every stage in order, then OUT/final and the held-out evaluation. What `out` already holds is continued:
    finished stages are kept, the unfinished one resumes from its newest step checkpoint, and a finished run is
    returned as it is (`finished_earlier`); `fresh=true` starts over."""
    out = resolve_out(cfg)
    check_out(cfg, out)  # every rank reads the same files, so all of them refuse alike (no rank left at a barrier)
    if not cfg.fresh and run_finished(cfg, out):
        if cfg.eval.data and not (out / "eval.json").is_file():  # trained, but its evaluation never finished
            if dist.is_main:
                from pipelines.evaluate.heldout import evaluate_run

                evaluate_run(cfg, out, device=dist.device)
            dist.barrier()
        return finished_summary(out)
    if dist.is_main:
        if cfg.fresh:
            fresh_start(cfg)
        elif has_progress(cfg, out):
            log.info("resuming %s: %s", out, where_it_stands(cfg, out))
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()
    summary = {}
    for index, stage in enumerate(cfg.stages):
        stage_dir = out / stage.name
        if stage_done(stage_dir):
            log.info("%s: finished earlier, kept", stage.name)
            summary[stage.name] = summarise(read_metrics(stage_dir))
            continue
        recipe = StageRecipe(cfg, index, out, dist).setup()
        try:
            history = recipe.train()
            recipe.save()
        finally:
            recipe.close()
        summary[stage.name] = summarise(history)
        if dist.report is not None:
            dist.report({"stage": stage.name, "step": recipe.step, **summary[stage.name].get("last", {})})
    if dist.is_main:
        publish_final(out / cfg.stages[-1].name, out / "final")
        (out / "train.json").write_text(json.dumps({"stages": summary, "final": str(out / "final")}, indent=1))
        if cfg.eval.data:
            from pipelines.evaluate.heldout import evaluate_run

            summary["eval"] = evaluate_run(cfg, out, device=dist.device)
    dist.barrier()
    return summary


def read_metrics(stage_dir: Path) -> list[dict]:
    path = stage_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln] if path.is_file() else []


def finished_summary(out: Path) -> dict:
    """What a finished run reported (train.json, eval.json), marked as not trained again."""
    summary = json.loads((out / "train.json").read_text()).get("stages", {})
    if (out / "eval.json").is_file():
        summary["eval"] = json.loads((out / "eval.json").read_text())
    return {**summary, "finished_earlier": True}


# ---- launchers ------------------------------------------------------------------------------------------------


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Ray workers may start in another working dir: send them absolute paths."""
    def fix(p: Optional[str]) -> Optional[str]:
        return str(Path(p).resolve()) if p else p

    cfg.data, cfg.init_from = fix(cfg.data), fix(cfg.init_from)
    cfg.out = str(resolve_out(cfg).resolve())
    cfg.base.llm, cfg.base.tokenizer = fix(cfg.base.llm), fix(cfg.base.tokenizer)
    cfg.eval.data, cfg.eval.annotate_config = fix(cfg.eval.data), fix(cfg.eval.annotate_config)
    cfg.eval.synth_out = fix(cfg.eval.synth_out)
    for s in cfg.stages:
        s.data = fix(s.data)
    return cfg


def _ray_train_loop(config: dict) -> None:
    """Ray Train's train_loop_per_worker: the same `run` on this worker's rank and device. Ray calls it again on
    every worker after a failure: each attempt continues from what is on disk (the driver made any fresh start), so
    a restart continues from the newest step checkpoint."""
    _setup_logging()
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(config)))
    run(cfg, ray_worker_dist())


def launch_ray(cfg: TrainConfig) -> dict:
    """Ray Train's TorchTrainer (DDP): `num_workers` workers, one GPU each when `device` is CUDA."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = absolute_paths(cfg)
    out = resolve_out(cfg)
    check_out(cfg, out)
    if not cfg.fresh and run_finished(cfg, out) and (not cfg.eval.data or (out / "eval.json").is_file()):
        return finished_summary(out)
    if cfg.fresh:
        fresh_start(cfg)
        cfg.fresh = False  # from here on, every attempt of the worker group continues from what is on disk
    use_gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if not ray.is_initialized():
        # "" = RAY_ADDRESS (set by `ray job submit`) if any, else a local instance.
        ray.init(address=cfg.ray_address or None, log_to_driver=True)
    # By reference to the importable module, not to __main__ (`python -m pipelines.train`), so the workers
    # import it instead of unpickling a copy of this whole module.
    from pipelines.train.run import _ray_train_loop as loop

    trainer = TorchTrainer(
        loop,
        train_loop_config=to_dict(cfg),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.ray_storage or str(Path(cfg.out) / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    path = out / "train.json"
    return json.loads(path.read_text())["stages"] if path.is_file() else {}


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pite train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML in configs/train/")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. data=runs/annotate/demo out=runs/train/x "
                                                 "stages.0.optim.max_steps=5 device=cpu fresh=true")
    args = parse_cli(p, argv)
    _setup_logging()
    cfg = None
    try:
        cfg = load_train_config(args.config, args.overrides)
        if cfg.name == "train":
            cfg.name = Path(args.config).stem
        if cfg.launcher == "ray":
            summary = launch_ray(cfg)
        else:
            dist = local_dist(cfg.device)
            try:
                summary = run(cfg, dist)
            finally:
                close(dist)
            if not dist.is_main:
                return 0
    except PiteError as exc:
        print(f"pite train: {exc}", file=sys.stderr)
        return 2
    except StoppedEarly as exc:
        print(f"pite train: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"pite train: {interrupted(cfg)}", file=sys.stderr)
        return 130
    print_summary(summary, resolve_out(cfg))
    return 0


def interrupted(cfg: Optional[TrainConfig]) -> str:
    """The one line a Ctrl-C ends with: what is kept, and that the same command continues from it."""
    if cfg is None:
        return "interrupted before it started: nothing was written"
    out = resolve_out(cfg)
    where = where_it_stands(cfg, out) if out.is_dir() else "nothing written yet"
    return (f"interrupted; {where}; the same command continues from there (`make train` likewise), fresh=true "
            f"starts over")


def print_summary(summary: dict, out: Path) -> None:
    if summary.get("finished_earlier"):
        print(f"pite train: {out} holds a finished run: nothing to do (fresh=true trains it again, or choose "
              f"another out=); its figures:")
    for name, s in summary.items():
        if name not in ("eval", "finished_earlier") and s:
            print(f"{name}: {s['steps']} steps in {s['seconds']:.0f} s, loss {s['first']['loss']:.3f} -> "
                  f"{s['last']['loss']:.3f} (lm {s['last']['lm_loss']:.3f}, loc {s['last']['loc_loss']:.3f}, "
                  f"traj {s['last']['traj_loss']:.3f})")
    if "eval" in summary:
        e = summary["eval"]
        print(f"held-out trajectory L1 {e['traj_l1']:.4f} vs constant {e['traj_l1_baseline']:.4f} "
              f"(ratio {e['ratio_to_baseline']:.2f}) and clip-mean oracle {e['traj_l1_clip_mean']:.4f}")
    print(f"outputs: {out}/ (final/, <stage>/metrics.jsonl, <stage>/tb/, train.json)")
