"""The instruments of bench/realsize.py: time inside model calls per stage (`ModelClock`: CUDA events on a GPU, wall
seconds on the CPU) and FLOPs per model stage (`FlopTally`, torch.utils.flop_counter), hooked onto an actor's stages
by `instrument`; `count_flops` turns one batch's FLOPs into a roofline on an H100."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

MODEL_STAGES = ("ground", "segment", "track", "propagate", "features")
H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM (NVIDIA's datasheet, without sparsity)
ROOFLINE_SHARES = (1.0, 0.4)  # of that peak: the bound, and what well-fed inference kernels reach


class ModelClock:
    """Time inside model calls, per stage: every outermost nn.Module call (a model forward, SAM's image encoder or
    mask decoder, the CoTracker predictor) of the calling thread, found by torch's global module hooks.

    CUDA: a pair of CUDA events on the current stream around each call; their elapsed time is device time from the
    call's first queued kernel to its last (idle gaps inside a call count, work outside module calls, such as SAM's
    mask upsampling, does not). CPU: wall seconds inside the calls."""

    def __init__(self, cuda: bool):
        self.cuda, self.stage, self.depth, self.spans = cuda, "setup", 0, []
        self.thread = threading.get_ident()
        self._start = None
        self._handles = []

    def __enter__(self) -> "ModelClock":
        from torch.nn.modules import module

        self._handles = [module.register_module_forward_pre_hook(self._enter),
                         module.register_module_forward_hook(self._exit, always_call=True)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _mark(self):
        import torch

        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _enter(self, _module, _args) -> None:
        if threading.get_ident() == self.thread:
            if self.depth == 0:
                self._start = self._mark()
            self.depth += 1

    def _exit(self, _module, _args, _out) -> None:
        if threading.get_ident() == self.thread:
            self.depth -= 1
            if self.depth == 0:
                self.spans.append((self.stage, self._start, self._mark()))

    def take(self) -> dict[str, float]:
        """Seconds per stage since the last take, and start afresh."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        out = defaultdict(float)
        for stage, a, b in self.spans:
            out[stage] += a.elapsed_time(b) / 1000 if self.cuda else b - a
        self.spans = []
        return dict(out)


class FlopTally:
    """FLOPs per model stage while `counting`, from torch.utils.flop_counter: matrix products, convolutions and
    attention, which set a GPU's time (element-wise work is not counted). They do not depend on weights' values or on
    the device, so a CPU run gives the GPU's count."""

    def __init__(self):
        self.counting, self.flops = False, defaultdict(int)

    def run(self, name: str, call):
        if not (self.counting and name in MODEL_STAGES):
            return call()
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            result = call()
        self.flops[name] += counter.get_total_flops()
        return result


def instrument(chain, clock: ModelClock, kept: list, flops: FlopTally | None = None) -> None:
    """Label the clock with the running stage; keep the first item the track stage sees (for the backward test);
    count each model stage's FLOPs when `flops` is counting."""
    for stage in chain.stages:
        def process(items, _run=stage.process, _name=stage.name):
            clock.stage = _name
            if _name == "track" and not kept:
                kept.extend(it for it in items[:1] if it.ok)
            try:
                return flops.run(_name, lambda: _run(items)) if flops is not None else _run(items)
            finally:
                clock.stage = "other"
        stage.process = process  # an instance attribute shadows the method for this chain only


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def count_flops(chain, batch: dict, flops: FlopTally) -> dict:
    """FLOPs per clip per model stage over one batch through the actor, and the roofline they give on an H100."""
    flops.counting = True
    try:
        out = chain(batch)
    finally:
        flops.counting = False
    n = len(out["row"])
    per_clip = {s: flops.flops.get(s, 0) / n for s in MODEL_STAGES}
    total = sum(per_clip.values())
    roofline = {f"at_{round(share * 100)}pct": round(3600 / (total / (H100_BF16_FLOPS * share)))
                for share in ROOFLINE_SHARES} if total else None
    return {"flops_per_clip": {s: float(f"{v:.4g}") for s, v in per_clip.items()},
            "flops_per_clip_total": float(f"{total:.4g}"), "flops_clips": n,
            "roofline_clips_per_hour_h100": roofline}
