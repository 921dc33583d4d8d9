"""One `device` setting per stage: auto, cpu, cuda, cuda:N or mps.

`auto` is the GPU when torch sees one, else the CPU. Inside a Ray GPU actor Ray sets CUDA_VISIBLE_DEVICES, so
"cuda" there is the GPU Ray assigned to the actor; on a CPU-only node the same config runs on the CPU.
"""

from __future__ import annotations

import re

from annotate.errors import ConfigError

_NAMED = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def resolve_device(name: str) -> str:
    """The torch device string for a `device` setting; a one-line ConfigError for a name we do not know."""
    text = str(name).strip().lower()
    if not _NAMED.fullmatch(text):
        raise ConfigError(f"device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)")
    if text != "auto":
        return text
    import torch  # only `auto` asks torch, so a CPU config never imports it here

    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_dtype(name: str, device: str) -> str:
    """The torch dtype name for a `dtype` setting on a resolved device: `auto` is bfloat16 on a GPU, float32 elsewhere
    (half precision on a CPU is slower than float32 and some kernels lack it)."""
    text = str(name).strip().lower()
    if text not in DTYPES:
        raise ConfigError(f"dtype: unknown dtype {name!r} (expected {' | '.join(DTYPES)})")
    if text != "auto":
        return text
    return "bfloat16" if device.startswith("cuda") else "float32"


def enable_tf32(device: str) -> None:
    """Let float32 matmuls and convolutions use TF32 tensor cores on a CUDA device (Ampere and later): about 8x the
    fp32 throughput for a 10-bit mantissa, well inside what the models' fp32 parts need. A process-wide torch
    setting, so it is set only when the stage runs on a GPU; a no-op on the CPU (and mps), where TF32 does not exist.
    """
    if not str(device).startswith("cuda"):
        return
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def frames_to_device(frames, device: str):
    """(n, h, w, 3) uint8 RGB frames -> (n, 3, h, w) uint8 torch tensor on `device`, for an image processor to
    resize and normalise there: uint8 crosses to the GPU at a quarter of float32's bytes, in one copy."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)
