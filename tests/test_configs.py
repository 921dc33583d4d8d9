"""Every shipped config loads with its typed loader (and the checks that loader runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.ablate.config import load_ablation_config, variant_train_config
from pipelines.annotate.config import AnnotateJobConfig, check_settings
from pipelines.config import load_config
from pipelines.train.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_train_configs_load(path):
    # the 7B recipes need a base and the previous stage, which a user passes on the command line
    cfg = load_train_config(path, ["init_from=/ckpt/previous", "base.llm=/models/vicuna-7b-v1.5"]
                            if path.name.endswith("-7b.yaml") else [])
    assert cfg.stages and cfg.loader.sampling == "epoch"
    if path.name.endswith("-7b.yaml"):
        assert cfg.model.template == "release" and cfg.stages[0].optim.epochs >= 1


@pytest.mark.parametrize("path", sorted((CONFIGS / "annotate").glob("*.yaml")), ids=lambda p: p.name)
def test_annotate_configs_load(path):
    check_settings(load_config(AnnotateJobConfig, path))


@pytest.mark.parametrize("path", sorted((CONFIGS / "ablation").glob("*.yaml")), ids=lambda p: p.name)
def test_ablation_configs_load_and_every_variant_makes_a_train_config(path, tmp_path):
    cfg = load_ablation_config(path)
    for variant in cfg.variants:
        stages = variant_train_config(cfg, variant)["stages"]
        written = tmp_path / f"{variant}.yaml"
        import yaml

        written.write_text(yaml.safe_dump({**variant_train_config(cfg, variant), "stages": stages}))
        assert load_train_config(written, cfg.overrides + cfg.variants[variant].overrides).stages
