"""Resumable training checkpoints: trainable weights, optimiser, scheduler, step, RNG states and data position.

    STAGE_DIR/checkpoints/step-000040/
      trainable.safetensors   every parameter that trains, by its full name (model.checkpoint.save_trainable)
      optimizer.pt            AdamW's state (tensors and numbers only: loads with weights_only=True)
      rng-rank0.pt ...        each rank's torch (+ CUDA), Python and NumPy RNG states
      trainer.json            step, data position, scheduler state, the config hash it was written under

A checkpoint is written into a hidden temporary dir and renamed, so a crash never leaves a half one; the
frozen rest of the model is rebuilt the same way the stage began (same base, same seed), then these load on top.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from annotate.errors import ConfigError
from model.checkpoint import load_trainable, save_trainable

PREFIX = "step-"


def list_checkpoints(stage_dir: str | Path) -> list[Path]:
    folder = Path(stage_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(stage_dir: str | Path, step: int, model, optimizer, scheduler, position: dict, config_hash: str,
               rank: int, world_size: int, barrier, gathered: Optional[tuple[dict, dict]] = None,
               write_more: Optional[Callable[[Path], None]] = None) -> Path:
    """Every rank writes its RNG file into the temporary dir; rank 0 writes the rest and renames it.

    `gathered`: (trainable weights, optimizer state) already gathered in full on rank 0 (FSDP,
    pipelines/train/fsdp.py); without it rank 0 reads them off its own (whole) model and optimizer.
    `write_more(tmp)`: rank 0 adds files before the rename (the step's PiTe checkpoint)."""
    folder = Path(stage_dir) / "checkpoints"
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f".{PREFIX}{step:06d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        if gathered is None:
            save_trainable(model, tmp / "trainable.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        else:
            save_file({k: v.contiguous() for k, v in gathered[0].items()}, str(tmp / "trainable.safetensors"))
            torch.save(gathered[1], tmp / "optimizer.pt")
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        meta = {"step": step, "position": position, "scheduler": sched, "config_hash": config_hash,
                "world_size": world_size}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1, default=float))
        if write_more is not None:
            write_more(tmp)
    barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    barrier()
    return final


def load_state(ckpt: Path, model, optimizer, scheduler, rank: int, world_size: int, config_hash: str,
               fsdp: bool = False) -> dict:
    """Load a checkpoint into the freshly set-up stage; returns trainer.json (step, position).

    `fsdp`: the model is sharded; every rank reads the full state and keeps its shard."""
    meta = json.loads((ckpt / "trainer.json").read_text())
    if meta["world_size"] != world_size:
        raise ConfigError(f"resume: {ckpt} was written by {meta['world_size']} ranks, this run has {world_size}: "
                          "the data position is per rank, so resume with the same number of workers")
    if meta["config_hash"] != config_hash:
        raise ConfigError(f"resume: {ckpt} was written under another config (hash {meta['config_hash']} vs "
                          f"{config_hash}): start a new `out` or restore the config")
    optim_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    if fsdp:
        from pipelines.train import fsdp as train_fsdp

        train_fsdp.load_full_trainable(model, load_file(str(ckpt / "trainable.safetensors")))
        train_fsdp.load_full_optimizer(model, optimizer, optim_state)
    else:
        load_trainable(model, ckpt / "trainable.safetensors")
        optimizer.load_state_dict(optim_state)
    # The schedule's lambdas are code, rebuilt by the stage's set-up; only its counters are restored.
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    rng_file = ckpt / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return meta


def prune(stage_dir: str | Path, keep: int) -> None:
    if keep > 0:
        for old in list_checkpoints(stage_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def newest(stage_dir: str | Path) -> Optional[Path]:
    found = list_checkpoints(stage_dir)
    return found[-1] if found else None
