"""`pite ablate` on a 2 x 2 grid of tiny runs (two variants, two seeds, a few steps each): the output files, a rerun
that skips what is done, and a summary whose means and paired intervals match a hand computation."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import yaml

from pipelines.ablate.cli import main
from pipelines.ablate.config import load_ablation_config, variant_train_config
from tests.train_helpers import D, K, T, make_run

pytestmark = pytest.mark.slow


def _train_config(tmp_path, data, heldout):
    cfg = {
        "data": str(data), "device": "cpu", "progress": False, "tensorboard": False, "seed": 0,
        "base": {"tiny": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 32, "vocab_size": 300, "max_position_embeddings": 256}},
        "model": {"feat_dim": D, "n_points": K, "n_frames": T, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "loader": {"batch_size": 2, "num_workers": 1, "shuffle_buffer": 4},
        "stages": [
            {"name": "stage1", "labels": {"stage": 1}, "lora": False, "trainable": {"llm": True, "traj_head": False},
             "optim": {"max_steps": 2, "warmup_steps": 1, "lr": 0.01}},
            {"name": "stage2", "labels": {"stage": 2}, "traj_head_from_loc": True, "trainable": {"loc_head": False},
             "optim": {"max_steps": 3, "warmup_steps": 1, "lr": 0.01}},
        ],
        "eval": {"data": str(heldout), "synth_out": ""},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture()
def grid(tmp_path):
    data = make_run(tmp_path / "run", n_shards=2, per_shard=4)
    heldout = make_run(tmp_path / "heldout", n_shards=1, per_shard=4, start=100)
    ablation = {
        "name": "tiny", "train_config": str(_train_config(tmp_path, data, heldout)), "out": str(tmp_path / "out"),
        "seeds": [0, 1], "evaluate": "heldout", "plot": ["traj_l1", "ratio_to_baseline"],
        "variants": {"full": {}, "no_stage1": {"drop": ["stage1"], "stages": {"stage2": {"optim": {"max_steps": 5}}}}},
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(ablation))
    return path, tmp_path / "out"


def test_a_2x2_grid_writes_its_outputs_skips_what_is_done_and_summarises_by_hand(grid, capsys):
    path, out = grid
    cfg = load_ablation_config(path)
    dropped = variant_train_config(cfg, "no_stage1")["stages"]
    assert [s["name"] for s in dropped] == ["stage2"] and dropped[0]["optim"]["max_steps"] == 5
    assert main(["--config", str(path)]) == 0
    lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in lines) == [("full", 0), ("full", 1), ("no_stage1", 0),
                                                                 ("no_stage1", 1)]
    for name in ("summary.json", "summary.md", "ablation.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    # the seed reached the trainer (runs of one variant differ) and the variant's stages did too
    full = {r["seed"]: r["figures"]["traj_l1"] for r in lines if r["variant"] == "full"}
    assert full[0] != full[1]
    assert not (out / "runs" / "no_stage1" / "seed-0" / "train" / "stage1").exists()

    # a rerun does nothing new
    assert main(["--config", str(path)]) == 0
    assert "0 run(s) to do, 4 done earlier" in capsys.readouterr().out
    assert len((out / "results.jsonl").read_text().splitlines()) == 4

    # the summary against a hand computation
    summary = json.loads((out / "summary.json").read_text())
    values = {(r["variant"], r["seed"]): r["figures"]["traj_l1"] for r in lines}
    for variant in ("full", "no_stage1"):
        pair = [values[variant, 0], values[variant, 1]]
        s = summary["variants"][variant]["traj_l1"]
        assert math.isclose(s["mean"], (pair[0] + pair[1]) / 2) and math.isclose(s["sd"], statistics.stdev(pair))
    d = [values["no_stage1", s] - values["full", s] for s in (0, 1)]
    mean_d, sd_d = sum(d) / 2, abs(d[0] - d[1]) / math.sqrt(2)
    half = 12.706 * sd_d / math.sqrt(2)  # Student's t, 1 degree of freedom, 97.5 %
    p = summary["paired"]["no_stage1"]["traj_l1"]
    assert math.isclose(p["mean_diff"], mean_d)
    assert math.isclose(p["ci95"][0], mean_d - half) and math.isclose(p["ci95"][1], mean_d + half)
    assert "no_stage1" in (out / "summary.md").read_text()


def test_unknown_stage_in_a_variant_is_a_config_error(grid, capsys):
    path, _ = grid
    assert main(["--config", str(path), "variants.bad.drop=[stage9]"]) == 2
    assert "stage9" in capsys.readouterr().err
