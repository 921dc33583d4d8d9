"""The trainer's typed config: one YAML = the base model, the data, and a list of stages run back to back.

    name / data / out / device / seed / fresh / launcher / num_workers    -- the run
    base:   where the LLM and tokenizer come from (a local dir, or a tiny random LLaMA for the CPU demo)
    model:  model.config.PiteConfig (what the checkpoint stores: heads' shapes, LoRA, template, lambdas)
    loader: the shard stream (batch size, DataLoader workers, shuffle buffer, epoch length)
    stages: what each stage trains, on which examples (labels.stage 1/2/3), with which losses and optimiser

Overrides are `key=value` (dotted), also into the stage list: `stages.0.optim.max_steps=5`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from annotate.errors import ConfigError
from model.config import LabelConfig, PiteConfig
from model.factory import TinyLlamaSettings
from pipelines.config import load_config


@dataclass
class BaseSettings:
    kind: str = "tiny"  # tiny: a random tiny LLaMA (demo, tests) | pretrained: the local dir `llm`
    # pretrained: local HF dir of the base LLM (e.g. vicuna-7b-v1.5); with init_from, where that checkpoint's
    # base now is (default: the path its pite.json records)
    llm: Optional[str] = None
    tokenizer: Optional[str] = None  # tokenizer dir (default: the llm's); tiny: trained on the data's captions
    dtype: str = "float32"  # the frozen base weights: float32 | bfloat16 | float16
    tiny: TinyLlamaSettings = field(default_factory=TinyLlamaSettings)  # tiny.vocab_size: the BPE trained for it


@dataclass
class LoaderSettings:
    batch_size: int = 4  # examples per micro-batch per rank
    num_workers: int = 2  # DataLoader workers per rank (each streams its own shards)
    shuffle_buffer: int = 64  # samples
    # epoch: every sample once per pass over all ranks and workers (pipelines/train/epochs.py) | resample: each
    # worker draws its shards with replacement, `epoch_batches` per epoch
    sampling: str = "epoch"
    epoch_batches: int = 0  # resample: micro-batches per rank per epoch; 0 = this rank's samples / batch_size
    heldout_fraction: float = 0.0  # samples whose key hashes below this are never trained on (eval split)
    prefetch_factor: int = 2
    # > 1: pool this many batches' examples, sort them by length, cut batches, shuffle their order (less padding)
    group_by_length: int = 0


@dataclass
class OptimSettings:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 10
    max_steps: int = 100  # optimiser steps (when epochs is 0)
    # > 0: the stage runs this many passes over its data (loader.sampling: epoch), and the schedule spans an
    # estimate of their steps (held at its last rate if the passes take longer)
    epochs: int = 0
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_accum: int = 1  # micro-batches per optimiser step
    clip: float = 1.0  # max gradient norm (0 = off)
    # Learning-rate multipliers by parameter-name prefix, e.g. {time_pointer: 5}: a part trained from scratch
    # beside a pretrained LLM learns at a multiple of its rate (LLaVA-style "mm_projector_lr").
    lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class Trainable:
    adapter: bool = True
    lora: bool = True
    loc_head: bool = True
    traj_head: bool = True
    llm: bool = False  # the whole LLM (only sensible for a tiny random one)
    time_pointer: Optional[bool] = None  # model.time_pointer's weights; None: they train with the LLM or LoRA


@dataclass
class StageConfig:
    name: str = "stage"
    labels: LabelConfig = field(default_factory=LabelConfig)  # labels.stage: 1 localisation, 2 trajectories, 3 chat
    trainable: Trainable = field(default_factory=Trainable)
    lambda_lm: float = 1.0
    lambda_loc: float = 1.0
    lambda_traj: float = 1.0
    optim: OptimSettings = field(default_factory=OptimSettings)
    data: str = ""  # this stage's annotation run dir ("" = the run's `data`)
    lora: bool = True  # wrap the LLM with a fresh LoRA adapter (after merging the previous stage's)
    traj_head_from_loc: bool = False  # start the trajectory head from the (trained) localisation head, repeated


@dataclass
class SpeedSettings:
    """Step-time switches (bench/train.py --fast-vs-slow measures them together); none changes what is learned."""

    logits_at_labels: bool = True  # the LM head only where a label follows (not on frames and prompts)
    # PEFT casts every LoRA input to the adapter's fp32; under bf16 autocast the matmuls run in bf16 anyway
    lora_input_cast: bool = False


@dataclass
class EvalSettings:
    data: str = ""  # held-out annotation run dir ("" = no evaluation after training)
    synth_seed: int = 1000  # when `data` is missing: synthesise this many clips at this seed and annotate them
    synth_n: int = 16
    synth_start: int = 1000  # first clip index (video ids synth-001000...), distinct from the training ids
    synth_out: str = ""  # where those clips go ("" = do not synthesise: `data` must exist)
    annotate_config: str = "configs/annotate/demo.yaml"
    batch_size: int = 8


@dataclass
class TrainConfig:
    name: str = "train"  # run name: the default output dir is runs/train/<name>
    data: str = ""  # annotation run dir (its shards/ are streamed)
    out: str = ""
    # A PiTe checkpoint dir the first stage starts from: "" = the base LLM with fresh heads; null = required
    # (a later-stage config: set it to the previous stage's output dir).
    init_from: Optional[str] = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    seed: int = 0
    # The same command continues what `out` holds (finished stages kept, the unfinished one from its newest step
    # checkpoint); true drops it all and starts over (pipelines/train/resume.py).
    fresh: bool = False
    launcher: str = "local"  # local: one process, or torchrun's env:// | ray: Ray Train TorchTrainer
    num_workers: int = 1  # ray: training workers (one GPU each when device is cuda)
    cpus_per_worker: int = 1  # ray
    ray_address: str = ""  # ray: "" = the cluster of `ray job submit` if any, else a local one
    ray_storage: str = ""  # ray: RunConfig storage path ("" = OUT/ray)
    strategy: str = "ddp"  # ddp | fsdp (FSDP2: decoder layers and the rest sharded over ranks; pipelines/train/fsdp.py)
    max_steps: int = 0  # > 0: every stage runs this many steps (quick tries, tests)
    log_every: int = 1
    save_every: int = 0  # optimiser steps between resumable checkpoints (0 = only at the end of a stage)
    keep_checkpoints: int = 2
    stop_at: int = 0  # > 0: stop abruptly right after step N of the first unfinished stage (resume tests)
    # > 0: the last rank's process dies (os._exit) right after step N of the first unfinished stage, once per OUT
    # (a marker file there): what a lost node does to a Ray Train run (restart tests)
    kill_at: int = 0
    # ray: restarts of the whole worker group after a worker dies, each resuming from the newest step checkpoint
    # (set save_every); 0 = a dead worker ends the run
    max_failures: int = 0
    progress: bool = True
    tensorboard: bool = True
    base: BaseSettings = field(default_factory=BaseSettings)
    model: PiteConfig = field(default_factory=PiteConfig)
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(name="stage2")])
    eval: EvalSettings = field(default_factory=EvalSettings)


_LIST_PATH = re.compile(r"(^|\.)\d+(\.|=|$)")


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """TrainConfig from defaults <- YAML <- overrides; `stages.N.x=v` overrides reach into the stage list."""
    plain = [o for o in overrides if not _LIST_PATH.search(o.partition("=")[0])]
    listed = [o for o in overrides if o not in plain]
    cfg = load_config(TrainConfig, path, plain)
    if listed:
        # OmegaConf cannot merge a dotlist into a list node; `update` can, with the same type checks.
        node = OmegaConf.structured(cfg)
        for item in listed:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r}: expected key=value")
            index = re.match(r"stages\.(\d+)\.", key)
            if index and int(index.group(1)) >= len(cfg.stages):
                raise ConfigError(f"override {item!r}: the config has {len(cfg.stages)} stages")
            try:
                OmegaConf.update(node, key, yaml.safe_load(value), merge=True)
            except (OmegaConfBaseException, yaml.YAMLError, IndexError) as exc:
                raise ConfigError(f"override {item!r}: {' '.join(str(exc).splitlines()[0].split())}") from exc
        cfg = OmegaConf.to_object(node)
    check(cfg)
    return cfg


def check(cfg: TrainConfig) -> None:
    if cfg.base.kind not in ("tiny", "pretrained"):
        raise ConfigError(f"base.kind: expected tiny or pretrained, got {cfg.base.kind!r}")
    if cfg.init_from is None:
        raise ConfigError("init_from: this stage starts from the previous stage's output: set init_from=DIR "
                          "(e.g. init_from=runs/train/stage1-7b/final)")
    if cfg.base.kind == "pretrained" and not cfg.base.llm and not cfg.init_from:
        raise ConfigError("base.llm: set it to a local HF-format LLM dir (e.g. base.llm=/models/vicuna-7b-v1.5; "
                          "download lmsys/vicuna-7b-v1.5 with huggingface-cli first)")
    if cfg.launcher not in ("local", "ray"):
        raise ConfigError(f"launcher: expected local or ray, got {cfg.launcher!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision: expected auto, fp32 or bf16, got {cfg.precision!r}")
    if cfg.strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy: expected ddp or fsdp, got {cfg.strategy!r}")
    if cfg.strategy == "fsdp" and cfg.base.dtype != "float32" and any(s.trainable.llm for s in cfg.stages):
        # FSDP2 shards the root's trainable parameters as one group, which must share a dtype: a trained
        # bf16/fp16 embedding table beside the fp32 adapter and heads is refused at its first forward.
        raise ConfigError(f"strategy fsdp: a stage trains the whole LLM (trainable.llm) on a {cfg.base.dtype} base; "
                          "use base.dtype=float32, LoRA, or strategy=ddp")
    if not cfg.stages:
        raise ConfigError("stages: at least one stage is needed")
    names = [s.name for s in cfg.stages]
    for i, name in enumerate(names):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) or name == "final":
            raise ConfigError(f"stages[{i}].name: {name!r} must be a plain folder name other than 'final'")
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: names must be distinct, got {names}")
    for i, s in enumerate(cfg.stages):
        o = s.optim
        if o.max_steps < 1 or o.grad_accum < 1 or o.lr <= 0 or o.warmup_steps < 0 or len(o.betas) != 2:
            raise ConfigError(f"stages[{i}].optim: need max_steps >= 1, grad_accum >= 1, lr > 0, warmup_steps >= 0 "
                              f"and two betas, got {o}")
    if cfg.loader.sampling not in ("epoch", "resample"):
        raise ConfigError(f"loader.sampling: expected epoch or resample, got {cfg.loader.sampling!r}")
    for i, s in enumerate(cfg.stages):
        if s.optim.epochs < 0 or (s.optim.epochs and cfg.loader.sampling != "epoch"):
            raise ConfigError(f"stages[{i}].optim.epochs: counts real passes: needs epochs >= 0 and "
                              f"loader.sampling=epoch, got {s.optim.epochs} with {cfg.loader.sampling}")
    if cfg.loader.batch_size < 1 or cfg.loader.num_workers < 0 or cfg.loader.shuffle_buffer < 1:
        raise ConfigError("loader: need batch_size >= 1, num_workers >= 0 and shuffle_buffer >= 1")
    if not 0 <= cfg.loader.heldout_fraction < 1:
        raise ConfigError(f"loader.heldout_fraction: expected in [0, 1), got {cfg.loader.heldout_fraction}")
    if cfg.max_failures < 0:
        raise ConfigError(f"max_failures: expected >= 0, got {cfg.max_failures}")
    if cfg.num_workers < 1:
        raise ConfigError(f"num_workers: expected >= 1, got {cfg.num_workers}")


def stage_steps(cfg: TrainConfig, stage: StageConfig) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else stage.optim.max_steps


def resolve_out(cfg: TrainConfig) -> Path:
    return Path(cfg.out or f"runs/train/{cfg.name}")
