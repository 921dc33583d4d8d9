"""Two Ray Train workers (TorchTrainer, gloo on CPU) run the same loop a few steps, replicated (DDP) or sharded
(FSDP), and save a checkpoint that loads."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint
from pipelines.train.run import main
from tests.train_helpers import D, K, T, make_run


def _config(data, strategy: str = "ddp", steps: int = 3) -> dict:
    return {
        "data": str(data), "device": "cpu", "progress": False, "tensorboard": False, "seed": 0,
        "launcher": "ray", "num_workers": 2, "cpus_per_worker": 1, "strategy": strategy,
        "base": {"tiny": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 32, "vocab_size": 300, "max_position_embeddings": 256}},
        "model": {"feat_dim": D, "n_points": K, "n_frames": T, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "loader": {"batch_size": 2, "num_workers": 1, "shuffle_buffer": 4, "epoch_batches": 5},
        "stages": [{"name": "s2", "labels": {"stage": 2},
                    "optim": {"max_steps": steps, "warmup_steps": 1, "lr": 0.01}}],
    }


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ray_train_workers_train_and_save_a_loadable_checkpoint(tmp_path, strategy):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    data = make_run(tmp_path / "run", n_shards=4, per_shard=4)
    cfg = _config(data, strategy)
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    # A private local instance (other Ray clusters may run on this machine), shut down afterwards.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["--config", str(path), f"out={out}"]) == 0
    finally:
        ray.shutdown()
    rows = [json.loads(ln) for ln in (out / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # Two ranks of 2 examples each: the logged counts are all-reduced over both.
    assert all(r["examples"] == 4 for r in rows) and all(r["traj_loss"] > 0 for r in rows)
    model, tok, template = load_checkpoint(out / "final")
    assert model.has_lora and model.trajectory_projector.out_features == K * T * 2
    with torch.no_grad():
        gen = model.generate(torch.tensor([tok.bos_token_id]), max_new_tokens=2, tokenizer=tok)
    assert gen[0].trajectories.shape[1:] == (K, T, 2)


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint_and_ends_with_the_same_loss(tmp_path):
    """Rank 1's process dies after step 3 (os._exit, as a lost node); Ray Train restarts both workers
    (max_failures), they resume from step 2's checkpoint, and every logged loss equals the uninterrupted run's."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    data = make_run(tmp_path / "run", n_shards=4, per_shard=4)
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump({**_config(data, steps=5), "save_every": 2}))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["--config", str(path), f"out={tmp_path / 'whole'}"]) == 0
        assert main(["--config", str(path), f"out={tmp_path / 'killed'}", "kill_at=3", "max_failures=1"]) == 0
    finally:
        ray.shutdown()
    assert (tmp_path / "killed" / ".killed-s2-3").is_file()  # the kill happened

    def losses(out):
        return [(r["step"], r["loss"]) for r in map(json.loads, (out / "s2" / "metrics.jsonl").read_text().splitlines())]

    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")
    assert [s for s, _ in losses(tmp_path / "whole")] == [1, 2, 3, 4, 5]
