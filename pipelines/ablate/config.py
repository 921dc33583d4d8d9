"""The ablation grid's typed config (configs/ablation/*.yaml).

A variant is an overlay on the base train config: `drop` removes stages by name, `stages` sets keys of named
stages (`{stage3: {optim: {max_steps: 400}}}`), `overrides` are `key=value` like the trainer's command line.
`stages` and `overrides` at the top apply to every run (a shortened schedule, say) before the variant's own. Stages
are named, not numbered, because a variant that drops one renumbers the rest.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml
from omegaconf import OmegaConf

from annotate.errors import ConfigError
from pipelines.config import load_config


@dataclass
class Variant:
    drop: list[str] = field(default_factory=list)  # stage names left out
    stages: dict = field(default_factory=dict)  # stage name -> keys to set in it
    overrides: list[str] = field(default_factory=list)  # key=value for the trainer


@dataclass
class AblationConfig:
    name: str = "ablation"
    train_config: str = "configs/train/demo.yaml"
    out: str = ""  # "" = runs/ablation/<name>
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str = "full"  # the variant every other one is compared with, seed by seed
    overrides: list[str] = field(default_factory=list)  # key=value for every run's trainer
    stages: dict = field(default_factory=dict)  # stage name -> keys to set, in every variant (before its own)
    variants: dict[str, Variant] = field(default_factory=lambda: {"full": Variant()})
    # bench: `make eval`'s figures (pipelines/evaluate/bench.py) | heldout: the trainer's held-out check (eval.json)
    evaluate: str = "bench"
    eval_args: list[str] = field(default_factory=list)  # extra arguments of the bench
    # figures drawn in ablation.png (all of them go to summary.json and summary.md)
    plot: list[str] = field(default_factory=lambda: ["grounding_R1@0.3", "grounding_R1@0.5", "grounding_R1@0.7",
                                                     "grounding_mIoU", "trajectory_L1", "captioning_CIDEr"])


def load_ablation_config(path: str | Path, overrides: Sequence[str] = ()) -> AblationConfig:
    cfg = load_config(AblationConfig, path, overrides)
    if cfg.reference not in cfg.variants:
        raise ConfigError(f"reference: {cfg.reference!r} is not one of the variants {sorted(cfg.variants)}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: expected distinct seeds, got {cfg.seeds}")
    if cfg.evaluate not in ("bench", "heldout"):
        raise ConfigError(f"evaluate: expected bench or heldout, got {cfg.evaluate!r}")
    if not Path(cfg.train_config).is_file():
        raise ConfigError(f"train_config: {cfg.train_config} not found")
    base = [s["name"] for s in yaml.safe_load(Path(cfg.train_config).read_text()).get("stages", [])]
    for name, v in cfg.variants.items():
        unknown = sorted((set(v.drop) | set(v.stages) | set(cfg.stages)) - set(base))
        if unknown:
            raise ConfigError(f"variants.{name}: stage(s) {unknown} are not in {cfg.train_config} (stages {base})")
    return cfg


def resolve_out(cfg: AblationConfig) -> Path:
    return Path(cfg.out or f"runs/ablation/{cfg.name}")


def variant_train_config(cfg: AblationConfig, name: str) -> dict:
    """The base train config (a plain dict) with the variant's stages dropped and its stage keys set."""
    base = yaml.safe_load(Path(cfg.train_config).read_text())
    v = cfg.variants[name]
    stages = []
    for stage in base.get("stages", []):
        if stage["name"] in v.drop:
            continue
        for overlay in (cfg.stages.get(stage["name"]), v.stages.get(stage["name"])):
            if overlay:
                stage = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(copy.deepcopy(stage)),
                                                               OmegaConf.create(dict(overlay))))
        stages.append(stage)
    if not stages:
        raise ConfigError(f"variants.{name}: drops every stage")
    base["stages"] = stages
    return base


def select(cfg: AblationConfig, variants: Optional[Sequence[str]], seeds: Optional[Sequence[int]]) -> AblationConfig:
    """The grid narrowed to `variants` and `seeds` (the reference stays, it is what the others are compared with)."""
    if variants:
        unknown = sorted(set(variants) - set(cfg.variants))
        if unknown:
            raise ConfigError(f"--variants: {unknown} not in the config ({sorted(cfg.variants)})")
        keep = list(dict.fromkeys([cfg.reference, *variants]))
        cfg.variants = {k: cfg.variants[k] for k in keep}
    if seeds:
        cfg.seeds = list(seeds)
    return cfg
