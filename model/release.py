"""Load the PiTe release (yliu-cs/PiTe) as published into a PiteModel.

The release ships, for each size (7B / 13B):

    vicuna-7b-v1.5/                  the base LLM (HF format, sentencepiece tokenizer)
    clip-vit-large-patch14/          the frame encoder (CLIPVisionModelWithProjection image_embeds, 768-d)
    pite-vicuna-7b-v1.5-stage{1,2,3}/
        adapter_config.json          PEFT LoRA; targets every Linear but lm_head, so the vision adapter and both
        adapter_model.bin|safetensors  heads too (module names `vision_adapter`, `localization_projector`, ...)
        non_lora_trainables.bin      full weights trained outside LoRA (keys may start with `base_model.` /
                                     `model.model.`)
        vision_adapter.bin           (stage 2, else stage 1) the adapter, keys containing `vision_adapter.`

In the release's model (`PiTeLlamaForCausalLM`) the adapter and the heads live inside the LLaMA body, as
`model.vision_adapter`, `model.localization_projector` (hidden -> 2) and `model.trajectory_projector`
(hidden -> 3 * 100 * 2). Its loading order, reproduced here step for step:

    base LLM + fresh adapter/heads -> vision_adapter.bin -> for stage 1, 2, 3: non_lora_trainables.bin, then the
    stage's LoRA, merged (each weight and its delta added in fp32: model.checkpoint.merge_in_fp32)

So we attach the three Linears under `llm.model` with the release's names while merging (PEFT then finds its
target modules by the same names), and move them out into the PiteModel at the end. The release reads heads at
the position before a token (head_shift 1) and prompts with `<video>\n{query}` in the Vicuna v1 template.
Pickled .bin files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from annotate.errors import ConfigError
from model.checkpoint import load_llm, merge_in_fp32
from model.config import LoraSettings, PiteConfig
from model.conversation import Template, get_template
from model.pite import PiteModel
from model.tokenizer import load_tokenizer

# The release's fixed sizes (pite.py): CLIP ViT-L/14 image_embeds, K=3 points, T=100 frames.
FEAT_DIM, N_POINTS, N_FRAMES = 768, 3, 100
EXTRA_MODULES = ("vision_adapter", "localization_projector", "trajectory_projector")
NON_LORA_FILE = "non_lora_trainables.bin"
VISION_ADAPTER_FILE = "vision_adapter.bin"


@dataclass
class ReleasePaths:
    """Where the release's parts are (the names of the release's inference.py arguments)."""

    model_base: str  # vicuna-7b-v1.5 dir
    stage1: Optional[str] = None
    stage2: Optional[str] = None
    stage3: Optional[str] = None
    clip_path: Optional[str] = None  # clip-vit-large-patch14 dir (for features; not needed to load the LLM)
    pretrain_vision_adapter: Optional[str] = None  # default: stage2/vision_adapter.bin, else stage1's

    def stages(self) -> list[str]:
        """The stage dirs to merge, in order; like the release, stage k+1 is used only when stage k is."""
        out = []
        for s in (self.stage1, self.stage2, self.stage3):
            if not s:
                break
            out.append(s)
        return out

    def vision_adapter_file(self) -> Path:
        if self.pretrain_vision_adapter:
            return Path(self.pretrain_vision_adapter)
        for stage in (self.stage2, self.stage1):
            if stage and (Path(stage) / VISION_ADAPTER_FILE).is_file():
                return Path(stage) / VISION_ADAPTER_FILE
        raise ConfigError(f"release: no {VISION_ADAPTER_FILE} in --stage2 ({self.stage2}) or --stage1 "
                          f"({self.stage1}); pass --pretrain_vision_adapter")


@dataclass
class ReleaseReport:
    """What the load did, for logs and tests."""

    stages: list[str] = field(default_factory=list)
    vision_adapter: str = ""
    non_lora_loaded: dict[str, list[str]] = field(default_factory=dict)  # stage dir -> parameter names set
    heads_loaded: bool = False  # some stage's non_lora_trainables held the localisation/trajectory heads


def release_config(**overrides) -> PiteConfig:
    """The PiteConfig that describes a released checkpoint."""
    base = dict(feat_dim=FEAT_DIM, n_points=N_POINTS, n_frames=N_FRAMES, head_shift=1, template="release",
                feature_backend="clip", feature_crop="center", lora=LoraSettings(enabled=False))
    base.update(overrides)
    return PiteConfig(**base)


def release_template() -> Template:
    return get_template("release")


def load_bin(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a pickled .bin, tensors only (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"release: {what} {path} not found")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/EOFError for bad files: one message for all
        raise ConfigError(f"release: {path} is not a readable tensor file ({' '.join(str(exc).split())[:160]})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"release: {path} does not hold a dict of tensors")
    return state


def normalise_keys(keys) -> dict[str, str]:
    """Release checkpoint keys -> parameter names in the release-shaped model (`PiTeLlamaForCausalLM`), by the
    release's load_lora rule: strip `base_model.` from each key; then, when ANY key starts with `model.model.`,
    strip one `model.` from EVERY key that starts with `model.` (so `base_model.model.lm_head.weight` becomes
    `lm_head.weight` beside `model.model.*` keys, and stays `model.lm_head.weight`, which names nothing, without).
    Keys saved from a PEFT-wrapped model may also carry `.base_layer.` (a LoRA-wrapped Linear's own weight) or
    `.modules_to_save.default.`: those are the plain weight too.
    """
    stripped = {k: k[len("base_model."):] if k.startswith("base_model.") else k for k in keys}
    if any(v.startswith("model.model.") for v in stripped.values()):
        stripped = {k: v[len("model."):] if v.startswith("model.") else v for k, v in stripped.items()}
    return {k: v.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".") for k, v in stripped.items()}


def attach_release_modules(llm: nn.Module, hidden: int) -> None:
    """The adapter and heads under the LLaMA body with the release's names, in fp32 whatever the LLM's dtype: they
    are fp32 in the PiteModel, so their weights and the stages' LoRA deltas on them are never rounded to bf16."""
    body = llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model
    device = next(llm.parameters()).device
    body.vision_adapter = nn.Linear(FEAT_DIM, hidden, device=device, dtype=torch.float32)
    body.localization_projector = nn.Linear(hidden, 2, device=device, dtype=torch.float32)
    body.trajectory_projector = nn.Linear(hidden, N_POINTS * N_FRAMES * 2, device=device, dtype=torch.float32)


def detach_release_modules(llm: nn.Module) -> dict[str, nn.Linear]:
    body = llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model
    modules = {name: getattr(body, name) for name in EXTRA_MODULES}
    for name in EXTRA_MODULES:
        delattr(body, name)
    return modules


def load_into(llm: nn.Module, state: dict[str, torch.Tensor], source: Path) -> list[str]:
    """Copy normalised `state` into the release-shaped `llm`; returns the names set.

    The release loads with strict=False, silently dropping what does not fit; a key that names no parameter
    here, or a shape that differs, is an error instead (a head silently left random would make every
    trajectory garbage).
    """
    own = dict(llm.named_parameters())
    own.update(dict(llm.named_buffers()))
    mapped: dict[str, torch.Tensor] = {}
    names = normalise_keys(state)
    for key, value in state.items():
        if ".lora_" in key or ".original_module." in key:
            continue  # LoRA weights belong to the adapter file; PEFT's copy of the pre-training module is unused
        name = names[key]
        if name not in own:
            raise ConfigError(f"release: {source}: key {key!r} (as {name!r}) names no parameter of the model")
        if own[name].shape != value.shape:
            raise ConfigError(f"release: {source}: {key!r} has shape {tuple(value.shape)}, the model has "
                              f"{tuple(own[name].shape)} (a checkpoint of another model size?)")
        mapped[name] = value
    with torch.no_grad():
        for name, value in mapped.items():
            own[name].copy_(value.to(own[name].dtype))
    return sorted(mapped)


def _vision_adapter_state(path: Path) -> dict[str, torch.Tensor]:
    """The release's get_w(weights, "vision_adapter"): whatever follows `vision_adapter.` in keys containing it."""
    state = load_bin(path, "vision adapter")
    out = {k.split("vision_adapter.")[1]: v for k, v in state.items() if "vision_adapter." in k}
    if set(out) != {"weight", "bias"}:
        raise ConfigError(f"release: {path} has no vision_adapter weight and bias (keys: {sorted(state)[:4]})")
    return out


def _check_stage(stage: Path) -> None:
    if not (stage / "adapter_config.json").is_file():
        raise ConfigError(f"release: stage dir {stage} has no adapter_config.json (a PEFT LoRA adapter dir)")
    if not any((stage / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ConfigError(f"release: stage dir {stage} has no adapter_model.safetensors or adapter_model.bin")


def load_release(paths: ReleasePaths, device: str = "cpu", dtype: str = "float32",
                 config: Optional[PiteConfig] = None) -> tuple[PiteModel, object, Template, ReleaseReport]:
    """(model, tokenizer, template, report) from the release layout; the stages merged in order, no live LoRA."""
    from peft import PeftModel

    stages = [Path(s) for s in paths.stages()]
    if not stages:
        raise ConfigError("release: --stage1 is required (the release merges stage 1, then 2, then 3)")
    for stage in stages:
        _check_stage(stage)
    config = config or release_config()
    report = ReleaseReport(stages=[str(s) for s in stages])
    tokenizer = load_tokenizer(paths.model_base, config.video_token, key="--model_base")
    llm = load_llm(paths.model_base, dtype=dtype, device=device, key="--model_base")
    hidden = llm.config.get_text_config().hidden_size
    attach_release_modules(llm, hidden)

    va_file = paths.vision_adapter_file()
    report.vision_adapter = str(va_file)
    adapter = (llm.get_decoder() if hasattr(llm, "get_decoder") else llm.model).vision_adapter
    va = _vision_adapter_state(va_file)
    if adapter.weight.shape != va["weight"].shape:
        raise ConfigError(f"release: {va_file}: vision_adapter weight {tuple(va['weight'].shape)}, the base LLM "
                          f"needs {tuple(adapter.weight.shape)} (a checkpoint of another model size?)")
    adapter.load_state_dict({k: v.to(adapter.weight.dtype) for k, v in va.items()})

    head_names = {f"model.{m}.{p}" for m in EXTRA_MODULES[1:] for p in ("weight", "bias")}
    for stage in stages:
        non_lora = stage / NON_LORA_FILE
        if non_lora.is_file():
            loaded = load_into(llm, load_bin(non_lora, "non-LoRA weights"), non_lora)
            report.non_lora_loaded[str(stage)] = loaded
            report.heads_loaded |= bool(head_names & set(loaded))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT warns about config keys of older versions it drops
            llm = merge_in_fp32(PeftModel.from_pretrained(llm, str(stage)))
    if not report.heads_loaded:
        warnings.warn("release: no stage's non_lora_trainables.bin holds the localization/trajectory heads; "
                      "their weights are only the LoRA deltas on a random start, so trajectories mean nothing")

    modules = detach_release_modules(llm)
    model = PiteModel(llm, config, video_token_id=tokenizer.convert_tokens_to_ids(config.video_token))
    with torch.no_grad():
        for name, module in modules.items():
            ours = getattr(model, name)
            if ours.weight.shape != module.weight.shape:
                raise ConfigError(f"release: {name} has shape {tuple(module.weight.shape)}, the config needs "
                                  f"{tuple(ours.weight.shape)}")
            ours.weight.copy_(module.weight.float())
            ours.bias.copy_(module.bias.float())
    model.to(device)
    model.eval()
    # A checkpoint saved from here must hold the merged weights in full: the stage adapters cannot be re-merged
    # onto a bare base (they also target the adapter and heads, which the base does not have).
    model.base_source = None
    model.merged_adapters = []
    return model, tokenizer, release_template(), report


def find_release(root: str | Path, scale: str = "7b") -> ReleasePaths:
    """The release's default layout under `root` (its inference.py defaults to ./checkpoint/...)."""
    root = Path(root)
    return ReleasePaths(
        model_base=str(root / f"vicuna-{scale}-v1.5"),
        stage1=str(root / f"pite-vicuna-{scale}-v1.5-stage1"),
        stage2=str(root / f"pite-vicuna-{scale}-v1.5-stage2"),
        stage3=str(root / f"pite-vicuna-{scale}-v1.5-stage3"),
        clip_path=str(root / "clip-vit-large-patch14"),
    )


def release_lora_targets(llm: nn.Module, exclude: Sequence[str] = ("lm_head",)) -> list[str]:
    """The release's find_all_linear_names: the last name part of every nn.Linear, lm_head excepted."""
    names = {name.split(".")[-1] for name, m in llm.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names - set(exclude))


def describe(report: ReleaseReport) -> str:
    return json.dumps({"stages": report.stages, "vision_adapter": report.vision_adapter,
                       "heads_loaded": report.heads_loaded,
                       "non_lora_keys": {k: len(v) for k, v in report.non_lora_loaded.items()}})
