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
    # the 7B and 13B recipes need a base and the previous stage, which a user passes on the command line
    recipe = path.name.endswith(("-7b.yaml", "-13b.yaml"))
    cfg = load_train_config(path, ["init_from=/ckpt/previous", "base.llm=/models/vicuna"] if recipe else [])
    assert cfg.stages and cfg.loader.sampling == "epoch"
    if recipe:
        assert cfg.model.template == "release" and cfg.stages[0].optim.epochs >= 1


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_13b_recipes_are_the_7b_ones_on_the_13b_base(stage):
    """No 13B training scripts exist (PiTe's release, VTimeLLM's scripts/): the 13B recipe may differ from the 7B
    one only in its name and the stage it starts from."""
    from dataclasses import asdict

    args = ["init_from=/ckpt/previous", "base.llm=/models/vicuna"]
    seven = asdict(load_train_config(CONFIGS / "train" / f"stage{stage}-7b.yaml", args))
    thirteen = asdict(load_train_config(CONFIGS / "train" / f"stage{stage}-13b.yaml", args))
    assert thirteen.pop("name") == f"stage{stage}-13b" and seven.pop("name") == f"stage{stage}-7b"
    assert thirteen == seven


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
