"""A rerun of `pite train` never loses work: the same command continues where it stopped, keeps every checkpoint,
ends with the losses of an uninterrupted run, leaves a finished run alone, and refuses another config in one line."""

from __future__ import annotations

import logging

import pytest
import yaml

from pipelines.train.run import main
from tests.train_helpers import losses, make_run, tiny_train_config

STAGES = [
    {"name": "s1", "labels": {"stage": 1}, "lora": False,
     "trainable": {"llm": True, "traj_head": False}, "optim": {"max_steps": 2, "warmup_steps": 1, "lr": 0.01}},
    {"name": "s2", "labels": {"stage": 2}, "traj_head_from_loc": True, "trainable": {"loc_head": False},
     "optim": {"max_steps": 6, "warmup_steps": 1, "lr": 0.01}},
]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = make_run(tmp / "run", n_shards=4, per_shard=4)
    cfg = tiny_train_config(data, STAGES, save_every=1, keep_checkpoints=10)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _steps(out, stage):
    return sorted(p.name for p in (out / stage / "checkpoints").iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_the_same_command_continues_keeps_every_checkpoint_and_matches_an_uninterrupted_run(
        tmp_path, config, caplog, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["--config", str(config), f"out={full}"]) == 0
    # Cut twice in stage 2 (stop_at: an abrupt stop right after that step), then the same command once more.
    assert main(["--config", str(config), f"out={cut}", "stop_at=3"]) == 3
    assert _steps(cut, "s2") == ["step-000001", "step-000002", "step-000003"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pite.train"):
        assert main(["--config", str(config), f"out={cut}", "stop_at=5"]) == 3
    said = caplog.text
    assert "s1 finished" in said and "s2 continues from step 3" in said and "s2: resumed at step 3" in said
    assert "s1: finished earlier, kept" in said
    # Nothing of the first attempt was removed: its three checkpoints stand beside the two new ones.
    assert _steps(cut, "s2") == [f"step-00000{i}" for i in range(1, 6)]
    assert main(["--config", str(config), f"out={cut}"]) == 0
    a, b = losses(full, "s2"), losses(cut, "s2")
    assert [r[0] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra == pytest.approx(rb, rel=1e-5, abs=1e-6)
    assert losses(full, "s1") == losses(cut, "s1")

    # Run once more: a finished run is left as it is, and the console says so.
    before = (cut / "final" / "heads.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--config", str(config), f"out={cut}"]) == 0
    out = capsys.readouterr().out
    assert "holds a finished run: nothing to do" in out and "fresh=true" in out and "s2: 6 steps" in out
    assert (cut / "final" / "heads.safetensors").stat().st_mtime_ns == before


def test_another_config_in_the_same_out_is_refused_in_one_line_and_fresh_starts_over(tmp_path, config, capsys):
    out = tmp_path / "out"
    assert main(["--config", str(config), f"out={out}", "stop_at=1"]) == 3
    kept = sorted(p.name for p in (out / "s1" / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["--config", str(config), f"out={out}", "seed=1", "stages.1.optim.lr=0.02"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "holds a run of another config (seed: 0 -> 1; stages.1.optim.lr: 0.01 -> 0.02)" in err
    assert "fresh=true starts over" in err
    assert sorted(p.name for p in (out / "s1" / "checkpoints").iterdir()) == kept  # nothing touched
    # Settings that do not change what is learned may differ (logging, checkpoint cadence, the stop hook).
    assert main(["--config", str(config), f"out={out}", "stop_at=2", "log_every=2", "save_every=2"]) == 3
    assert main(["--config", str(config), f"out={out}", "seed=1", "fresh=true", "stop_at=1"]) == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert [r[0] for r in losses(out, "s1")] == [1]


def test_flags_get_the_key_value_form_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--config", "configs/train/demo.yaml", "--out", "runs/x", "--fresh"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "write out=runs/x fresh=true" in err
