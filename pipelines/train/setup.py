"""What a training stage starts from: the base LLM (a local dir, or a tiny random LLaMA with a tokenizer trained
on the run's texts), the previous stage's checkpoint merged, the optimiser's parameter groups and the schedule."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from annotate.errors import ConfigError
from model.checkpoint import load_checkpoint, merge_lora
from model.config import PiteConfig
from model.conversation import get_template
from model.factory import build_pretrained, tiny_llama
from model.pite import PiteModel
from model.time_pointer import attach_time_tokens
from model.tokenizer import check_template, load_tokenizer, train_tokenizer
from pipelines.shards import iter_members
from pipelines.train.config import TrainConfig
from pipelines.train.data import run_shards
from pipelines.train.dist import Dist


def tokenizer_corpus(run_dirs: list[str], cfg: TrainConfig, limit: int = 5000) -> list[str]:
    """Texts a tiny tokenizer is trained on: captions and event texts of the runs, the stage prompts, timestamps."""
    texts = []
    for run in dict.fromkeys(run_dirs):
        for tar in run_shards(run):
            for _, members in iter_members(tar):
                meta = json.loads(members["json"]) if "json" in members else {}
                texts.append(meta.get("caption", ""))
                texts += [str(e.get("text", "")) for e in meta.get("events") or []]
                if len(texts) >= limit:
                    break
    for stage in cfg.stages:
        lab = stage.labels
        texts += lab.caption_queries + lab.image_queries + [lab.dense_query, lab.grounding_query]
    texts += [f"From {i:02d} to {99 - i:02d}." for i in range(100)]
    return texts


def tiny_tokenizer(cfg: TrainConfig, out: Path, dist: Dist):
    """Trained once on the run's texts by rank 0 and saved at OUT/tokenizer, so every rank and every resume shares it."""
    path = out / "tokenizer"
    if dist.is_main and not (path / "tokenizer.json").is_file():
        runs = [s.data or cfg.data for s in cfg.stages]
        tok = train_tokenizer(tokenizer_corpus(runs, cfg), vocab_size=cfg.base.tiny.vocab_size,
                              video_token=cfg.model.video_token,
                              split_digits=cfg.model.time_pointer)  # the pointer needs one token per digit
        tmp = out / ".tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_pretrained(str(tmp))
        tmp.rename(path)
    dist.barrier()
    return load_tokenizer(path, cfg.model.video_token, key="tokenizer")


def fresh_model(cfg: TrainConfig, out: Path, dist: Dist):
    """(model, tokenizer, template) on the base LLM with new adapter and heads (seeded: the same on every rank)."""
    config = PiteConfig.from_dict(asdict(cfg.model))
    template = get_template(config.template)
    if cfg.base.kind == "tiny":
        tokenizer = tiny_tokenizer(cfg, out, dist)
        check_template(tokenizer, template)
        llm = tiny_llama(tokenizer, cfg.base.tiny, seed=cfg.seed)
        attach_time_tokens(config, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            model = PiteModel(llm, config, video_token_id=tokenizer.convert_tokens_to_ids(config.video_token))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            model, tokenizer = build_pretrained(cfg.base.llm, config, tokenizer_path=cfg.base.tokenizer,
                                                dtype=cfg.base.dtype, device=str(dist.device))
    return model, tokenizer, template


def param_groups(model, lr: float, scales: dict[str, float], key: str) -> list[dict]:
    """The trainable parameters in AdamW groups: one at `lr`, one per `scales` prefix at lr x its factor (a name
    takes the longest matching prefix). A prefix that names no trainable parameter is a ConfigError."""
    groups: dict[str, list] = {"": []}
    prefixes = sorted(scales, key=len, reverse=True)
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(next((x for x in prefixes if name.startswith(x)), ""), []).append(p)
    unused = [x for x in scales if not groups.get(x)]
    if unused:
        raise ConfigError(f"{key}.lr_scale: {unused} name(s) no trainable parameter of this stage")
    return [{"params": ps, "lr": lr * scales.get(x, 1.0)} for x, ps in groups.items() if ps]


def stage_start(cfg: TrainConfig, index: int, out: Path, dist: Dist):
    """The model a stage begins with: the previous stage's (LoRA merged) or `init_from`, else a fresh one."""
    prev = str(out / cfg.stages[index - 1].name) if index > 0 else cfg.init_from
    if not prev:
        return fresh_model(cfg, out, dist)
    if not (Path(prev) / "pite.json").is_file():
        key = "init_from" if index == 0 else f"stage {cfg.stages[index - 1].name!r}"
        raise ConfigError(f"{key}: {prev} is not a finished PiTe checkpoint dir (no pite.json)")
    base = cfg.base.llm if cfg.base.kind == "pretrained" else None
    model, tokenizer, template = load_checkpoint(prev, device=str(dist.device), dtype=cfg.base.dtype,
                                                 trainable=False, base=base)
    if model.has_lora:
        merge_lora(model)
    # The checkpoint fixes the network's shapes; this run chooses how it trains.
    model.config.lora = cfg.model.lora
    model.config.gradient_checkpointing = cfg.model.gradient_checkpointing
    return model, tokenizer, template


def cosine_schedule(optimizer, warmup: int, total: int, min_ratio: float):
    """Linear warm-up, then a cosine from lr down to lr * min_ratio at step `total`, held there after. Written out
    because transformers' get_cosine_with_min_lr_schedule_with_warmup (the same curve up to `total`) rises again
    past it, and a stage counted in epochs may run a little past its estimated length."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
