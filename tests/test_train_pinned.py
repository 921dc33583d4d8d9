"""Pinned losses (torchtune's habit): the tiny model trained a few steps from a fixed seed gives these loss values,
so a silent change in the model, the labels or the data path shows up here. If a change means to move them,
run this test with PITE_PRINT_LOSSES=1 and pin what it prints, saying why in the commit."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from pipelines.train.config import load_train_config
from pipelines.train.dist import Dist
from pipelines.train.run import run
from tests.train_helpers import make_run, tiny_train_config

STAGES = [
    {"name": "s1", "labels": {"stage": 1}, "lora": False,
     "trainable": {"llm": True, "traj_head": False}, "optim": {"max_steps": 3, "warmup_steps": 1, "lr": 0.01}},
    {"name": "s2", "labels": {"stage": 2}, "traj_head_from_loc": True, "trainable": {"loc_head": False},
     "optim": {"max_steps": 3, "warmup_steps": 1, "lr": 0.01}},
]
# (stage, step) -> (lm_loss, loc_loss, traj_loss)
PINNED = {
    ("s1", 1): (5.71239, 0.68353, 0.0), ("s1", 2): (5.716221, 0.586661, 0.0), ("s1", 3): (5.574213, 0.511336, 0.0),
    ("s2", 1): (5.492623, 0.0, 0.345171), ("s2", 2): (5.489632, 0.0, 0.346167), ("s2", 3): (5.500414, 0.0, 0.236555),
}


def test_the_tiny_model_trains_to_the_pinned_losses(tmp_path):
    data = make_run(tmp_path / "run", n_shards=2, per_shard=4)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_train_config(data, STAGES, lora_dropout=0.0)))
    out = tmp_path / "out"
    run(load_train_config(path, [f"out={out}"]), Dist())
    got = {}
    for stage in ("s1", "s2"):
        for line in (out / stage / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            got[(stage, r["step"])] = (r["lm_loss"], r["loc_loss"], r["traj_loss"])
    if os.environ.get("PITE_PRINT_LOSSES"):
        print({k: tuple(round(v, 6) for v in vals) for k, vals in got.items()})
    assert set(got) == set(PINNED)
    for key, values in PINNED.items():
        assert got[key] == pytest.approx(values, rel=1e-3, abs=1e-5), key
