"""Save and load a PiTe checkpoint; merge LoRA between stages.

    CKPT/
      pite.json           format, model config (incl. head_shift, feature backend/crop), prompt template,
                          video token id, where the base LLM is, the merged adapters, the live adapter, `extra`
      heads.safetensors   vision_adapter.*, localization_projector.*, trajectory_projector.*, frame_readout.* (fp32)
      tokenizer/          the fast tokenizer (with the <video> token)
      base/               the LLM's base weights (save_pretrained), only when it has no source dir (a tiny
                          random base); earlier merged stages are baked into it
      merged/00, 01, ...  with a source dir (Vicuna): LoRA adapters of earlier stages, merged on load in order
      lora/               the live PEFT adapter (absent when none)

So a stage-3 checkpoint on Vicuna rebuilds as base -> merge stage-1 LoRA -> merge stage-2 LoRA -> stage-3
LoRA, as the release does, and stays small: the base LLM is referenced, not copied. Everything loads from
safetensors (no pickles).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from annotate.errors import ConfigError
from model.config import PiteConfig
from model.conversation import Template
from model.pite import PiteModel
from model.tokenizer import load_tokenizer

FORMAT = "pite-checkpoint"
VERSION = 1
HEADS_FILE = "heads.safetensors"
META_FILE = "pite.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, key: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"{key}: unknown dtype {name!r} (choose from {sorted(DTYPES)})")
    return DTYPES[name]


def load_llm(path: str | Path, dtype: str = "float32", device: str = "cpu", key: str = "model.llm"):
    """An AutoModelForCausalLM from a local HF-format dir (no network)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {path} is not a local model dir with config.json (e.g. vicuna-7b-v1.5)")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype), local_files_only=True).to(device)


def merge_in_fp32(peft_model) -> torch.nn.Module:
    """PEFT's merge_and_unload, with each target weight upcast to fp32 for the addition of its LoRA delta and cast
    back once: merging into bf16/fp16 weights directly rounds every delta to the base's 8 (or 11) mantissa bits,
    and the deltas of three stages add up. Each layer is upcast alone, so the extra memory is one weight's."""
    for module in peft_model.modules():
        if hasattr(module, "get_base_layer") and hasattr(module, "merge") and not getattr(module, "merged", True):
            base = module.get_base_layer()
            dtype = base.weight.dtype
            base.weight.data = base.weight.data.float()
            module.merge()
            base.weight.data = base.weight.data.to(dtype)
    return peft_model.unload()


def merge_lora(model: PiteModel) -> None:
    """Merge the live LoRA adapter into the LLM (moving to the next stage); remember it for checkpoints."""
    from peft import get_peft_model_state_dict

    if not model.has_lora:
        raise RuntimeError("merge_lora: the model has no LoRA adapter")
    config = model.llm.peft_config["default"].to_dict()
    state = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model.llm).items()}
    model.llm = merge_in_fp32(model.llm)
    model.merged_adapters.append((config, state))


def save_checkpoint(model: PiteModel, tokenizer, out_dir: str | Path, template: Template,
                    extra: Optional[dict] = None) -> Path:
    """Write `out_dir` (see the module doc). `extra` goes into pite.json as is (e.g. the stage, the step)."""
    from peft import get_peft_model_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model.base_source is None:
        # No source dir (a tiny random base): save the LLM's current base weights, earlier merges included.
        _save_base(model, out / "base")
    lora = None
    if model.has_lora:
        lora = (model.llm.peft_config["default"].to_dict(), get_peft_model_state_dict(model.llm))
    extra_state = {k: v.detach() for k, v in model.extra_state_dict().items()}
    return write_checkpoint(out, model, tokenizer, template, extra_state, lora, extra)


def write_checkpoint(out: Path, model: PiteModel, tokenizer, template: Template, extra_state: dict[str, torch.Tensor],
                     lora: Optional[tuple[dict, dict[str, torch.Tensor]]], extra: Optional[dict] = None) -> Path:
    """The checkpoint's files from weights already in hand: the adapter/heads state and the live LoRA's (config,
    PEFT state dict). `model` gives only what every rank holds whole (config, base reference, merged adapters),
    so an FSDP run writes this from gathered LoRA and heads without gathering its base (pipelines/train/fsdp.py).
    A tiny base (no source dir) must already be in out/base."""
    out.mkdir(parents=True, exist_ok=True)
    merged = []
    base_ref = "base" if model.base_source is None else model.base_source
    if model.base_source is not None:
        for i, (config, state) in enumerate(model.merged_adapters):
            merged.append(_write_adapter(out / "merged" / f"{i:02d}", config, state).relative_to(out).as_posix())
    if lora is not None:
        _write_adapter(out / "lora", *lora)
    save_file({k: v.float().contiguous().cpu() for k, v in extra_state.items()}, str(out / HEADS_FILE))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config.to_dict(),
        "template": template.to_dict(),
        "head_shift": model.config.head_shift,
        "features": {"backend": model.config.feature_backend, "crop": model.config.feature_crop},
        "video_token_id": model.video_token_id,
        "base": base_ref,
        "merged": merged,
        "lora": "lora" if lora is not None else None,
        "tokenizer": "tokenizer",
        "extra": extra or {},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def _write_adapter(path: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors) that PeftModel.from_pretrained reads."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(_jsonable(config), indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
    return path


def read_meta(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise ConfigError(f"checkpoint: {path} not found (not a PiTe checkpoint dir)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ConfigError(f"checkpoint: {path} has format {meta.get('format')!r} v{meta.get('version')}, "
                          f"expected {FORMAT!r} v{VERSION}")
    return meta


def load_checkpoint(ckpt_dir: str | Path, device: str = "cpu", dtype: str = "float32", trainable: bool = False,
                    base: Optional[str] = None) -> tuple[PiteModel, object, Template]:
    """(model, tokenizer, template) from a checkpoint dir. `base` overrides where the base LLM is (moved runs).

    The live LoRA adapter loads trainable when `trainable` (resume a stage), else frozen (inference).
    """
    from peft import PeftModel

    ckpt = Path(ckpt_dir)
    meta = read_meta(ckpt)
    base_ref = base or meta["base"]
    base_path = ckpt / base_ref if base_ref == "base" else Path(base_ref)
    llm = load_llm(base_path, dtype=dtype, device=device, key="checkpoint base (pass base=...)")
    merged_records = []
    for sub in meta["merged"]:
        llm = merge_in_fp32(PeftModel.from_pretrained(llm, str(ckpt / sub)))
        config = json.loads((ckpt / sub / "adapter_config.json").read_text())
        merged_records.append((config, load_file(str(ckpt / sub / "adapter_model.safetensors"))))
    if meta["lora"]:
        llm = PeftModel.from_pretrained(llm, str(ckpt / meta["lora"]), is_trainable=trainable)
    config = PiteConfig.from_dict(meta["model"])
    tokenizer = load_tokenizer(ckpt / meta["tokenizer"], config.video_token, key="checkpoint tokenizer")
    model = PiteModel(llm, config, video_token_id=meta["video_token_id"])
    load_extra_state(model, load_file(str(ckpt / HEADS_FILE)))
    model.base_source = None if base_ref == "base" else str(base_path)
    model.merged_adapters = merged_records
    model.to(device)
    return model, tokenizer, Template.from_dict(meta["template"])


def load_extra_state(model: PiteModel, state: dict[str, torch.Tensor]) -> list[str]:
    """Load adapter/head weights; a missing trajectory head is initialised from the localisation head.

    Returns the names that were missing (so a caller can log them). Unknown keys are errors.
    """
    own = model.extra_state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ConfigError(f"checkpoint heads: unknown keys {unknown[:5]}")
    missing = sorted(set(own) - set(state))
    # Soft: a trajectory head (made from the localisation head), the colour-slot adapter's clock and the time
    # pointer (both zero at init: a checkpoint saved before they existed behaves the same). A frame readout is
    # not: a fresh one would add random offsets to both heads.
    soft = ("trajectory_projector.", "vision_adapter.clock.", "time_pointer.")
    hard = [k for k in missing if not k.startswith(soft)]
    if hard:
        raise ConfigError(f"checkpoint heads: missing {hard}")
    for name, value in state.items():
        module, param = name.split(".", 1)
        target = getattr(model, module).state_dict(keep_vars=True)[param]  # nested names too (keypoint.bias)
        if target.shape != value.shape:
            raise ConfigError(f"checkpoint heads: {name} has shape {tuple(value.shape)}, "
                              f"the model expects {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(value)
    if any(k.startswith("trajectory_projector.") for k in missing):
        model.init_trajectory_from_localization()
    return missing


def _save_base(model: PiteModel, path: Path) -> None:
    """save_pretrained of the LLM without its live LoRA layers (peft keeps the base weight as `base_layer`)."""
    base = model.base_llm()
    state = base.state_dict()
    if model.has_lora:
        state = {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}
    base.save_pretrained(str(path), state_dict=state)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):  # enums (peft's task_type)
        return value.value
    return value


def save_trainable(model: PiteModel, path: str | Path) -> None:
    """The parameters that train now, by full name, in safetensors (a trainer's resumable checkpoint)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}, str(path))


def check_trainable_names(model, names, where: str) -> None:
    """A saved set of trainable weights must name exactly what trains in `model` (else a ConfigError)."""
    own = {k for k, p in model.named_parameters() if p.requires_grad}
    if set(names) != own:
        extra, missing = sorted(set(names) - own), sorted(own - set(names))
        raise ConfigError(f"{where}: trainable weights do not match the model (unexpected {extra[:3]}, "
                          f"missing {missing[:3]})")


def load_trainable(model: PiteModel, path: str | Path) -> None:
    """Inverse of `save_trainable` on a model set up the same way: the same names must train (else a ConfigError)."""
    state = load_file(str(path))
    params = dict(model.named_parameters())
    check_trainable_names(model, state, str(path))
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise ConfigError(f"{path}: {name} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(params[name].shape)}")
            params[name].copy_(value)
