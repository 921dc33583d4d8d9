"""`strategy: fsdp`: the training loop's model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Each decoder layer of the LLM is its own FSDP unit (its parameters are gathered for its forward and backward only),
and the PiteModel root holds the rest (embeddings, lm_head, adapter, heads). Frozen base weights shard too, so a
model larger than one GPU trains; LoRA needs no special care, FSDP2 shards per parameter. Gradients are averaged
over ranks by the reduce-scatter, as DDP's all-reduce does, so the loop's loss scaling is the same.

A sharded parameter is a DTensor, so everything that reads weights whole goes through
`torch.distributed.checkpoint.state_dict`. Every rank calls these functions together: each gathers its shards and
rank 0 receives the full tensors on CPU.
  - resumable checkpoints: the trainable weights and the optimizer state, gathered in full; on resume, rank 0's
    copy is read by every rank and each keeps its own shard;
  - PiTe checkpoints (each stage's, and each `checkpoints/step-N/`): on a pretrained base, which the checkpoint
    references by its dir, only the LoRA and the adapter/heads are gathered (`gather_checkpoint_parts`), about
    1 GB for Vicuna-7B with r 64, not the 13.5 GB base. A tiny random base is stored whole: rank 0 rebuilds the
    model unsharded and loads every gathered weight into it (`unsharded_clone`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import nn

from annotate.errors import ConfigError


def decoder_layers(model) -> list[nn.Module]:
    """The LLM's repeated blocks: what transformers lists in `_no_split_modules` (LlamaDecoderLayer, ...)."""
    llm = model.base_llm()
    names = set(getattr(llm, "_no_split_modules", None) or [])
    layers = [m for m in llm.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"strategy fsdp: {type(llm).__name__} lists no decoder layer class (_no_split_modules)")
    return layers


def shard(model, device: torch.device) -> None:
    """Shard in place: each decoder layer, then the root."""
    from torch.distributed.fsdp import fully_shard

    mesh = None
    if device.type == "cpu":  # FSDP2's default mesh is CUDA's; a CPU (gloo) run needs its own
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


@contextmanager
def no_gradient_sync(model, skip: bool):
    """Gradient accumulation: keep this micro-batch's gradients local (FSDP2's counterpart of DDP.no_sync)."""
    if not skip:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Every weight in full on rank 0 (an empty dict elsewhere). All ranks call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable weights in full on rank 0, by the names `model.checkpoint.save_trainable` writes."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    # ignore_frozen_params: a resumable save gathers LoRA and the heads, not a 7B frozen base
    state = get_model_state_dict(model, options=_options(ignore_frozen_params=True))
    return {k: v for k, v in state.items() if k in names}


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_full_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Each rank keeps its shard of the full trainable weights (`state`, read by every rank)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    from model.checkpoint import check_trainable_names

    check_trainable_names(model, state, "resume")
    set_model_state_dict(model, state, options=_options(strict=False))


def load_full_optimizer(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def gather_checkpoint_parts(model) -> tuple[dict, Optional[tuple[dict, dict]]]:
    """What a PiTe checkpoint on a referenced base needs, in full on every rank: the adapter/head state and the live
    LoRA's (config, PEFT state dict). Not the frozen base: the checkpoint names its source dir and merged adapters,
    which every rank holds whole. All ranks call it (one all-gather per sharded tensor, in the same order)."""
    from peft import get_peft_model_state_dict

    def full(t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()

    extra = {k: full(v) for k, v in model.extra_state_dict().items()}
    lora = None
    if model.has_lora:
        state = {k: full(v) for k, v in model.llm.state_dict().items() if "lora_" in k}
        lora = (model.llm.peft_config["default"].to_dict(), get_peft_model_state_dict(model.llm, state_dict=state))
    return extra, lora


def unsharded_clone(model, rebuild: Callable[[], nn.Module], is_main: bool) -> Optional[nn.Module]:
    """Every weight gathered (all ranks) into an unsharded rebuild of the model (rank 0; None elsewhere): for a
    tiny random base, which a checkpoint stores whole."""
    state = full_model_state(model)
    if not is_main:
        return None
    clone = rebuild()
    missing, unexpected = clone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"fsdp save: the rebuilt model does not match the sharded one (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return clone
