"""What every random-weights writer shares (pipelines/weights.py, pipelines/weights_sam3.py): staged writes, seeding,
progress lines."""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def staged(final: Path):
    """Yield a temporary sibling to write; move it to `final` only when done, so an interrupted run never leaves a
    half-written checkpoint under the name a loader reads (a stale `.partial` is cleared by the next run)."""
    tmp = final.with_name(f".{final.name}.partial")
    remove_path(tmp)
    yield tmp
    remove_path(final)
    os.replace(tmp, final)


def say(message: str) -> None:
    print(f"pite weights: {message}", file=sys.stderr, flush=True)


def seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def n_params(model) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.1f} M params" if n >= 1e6 else f"{n / 1e3:.1f} K params"
