"""`strategy: fsdp` under torchrun (2 CPU ranks, gloo): the same losses as DDP, resume after a stop equals an
uninterrupted run, and each stage's checkpoint is whole (gathered) and loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint
from tests.train_helpers import K, T, make_run, tiny_train_config

pytestmark = pytest.mark.slow

STAGES = [
    {"name": "s1", "labels": {"stage": 1}, "lora": False, "trainable": {"llm": True, "traj_head": False},
     "optim": {"max_steps": 2, "warmup_steps": 1, "lr": 0.01}},
    {"name": "s2", "labels": {"stage": 2}, "traj_head_from_loc": True, "trainable": {"loc_head": False},
     "optim": {"max_steps": 4, "warmup_steps": 1, "lr": 0.01, "grad_accum": 2}},
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, data: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cfg = tiny_train_config(data, STAGES, layers=2, lora_dropout=0.0, save_every=3)
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_port()), "-m", "pipelines.train", "--config", str(path), f"out={out}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _losses(out: Path, stage: str) -> list[tuple]:
    rows = [json.loads(ln) for ln in (out / stage / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lm_loss"], r["loc_loss"], r["traj_loss"], r["examples"]) for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    data = make_run(tmp / "run", n_shards=4, per_shard=4)
    done = {}
    for name, overrides in [("ddp", ["strategy=ddp"]), ("fsdp", ["strategy=fsdp"])]:
        job = _torchrun(tmp, data, tmp / name, *overrides)
        assert job.returncode == 0, f"{name}: torchrun exited {job.returncode}\n{job.stderr[-4000:]}"
        done[name] = tmp / name
    # FSDP stopped right after s2's step 3 (its checkpoint, gathered from both ranks), then resumed to the end
    stopped = _torchrun(tmp, data, tmp / "resumed", "strategy=fsdp", "stop_at=3")
    assert stopped.returncode != 0 and "s2: stopped at step 3" in stopped.stderr, stopped.stderr[-4000:]
    assert (tmp / "resumed" / "s2" / "checkpoints" / "step-000003" / "trainable.safetensors").is_file()
    resumed = _torchrun(tmp, data, tmp / "resumed", "strategy=fsdp")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    done["resumed"] = tmp / "resumed"
    return done


def test_fsdp_gives_the_losses_of_ddp(runs):
    for stage in ("s1", "s2"):
        ddp, fsdp = _losses(runs["ddp"], stage), _losses(runs["fsdp"], stage)
        assert [r[0] for r in fsdp] == [r[0] for r in ddp]
        assert [r[4] for r in fsdp] == [r[4] for r in ddp]  # the same examples, counted over both ranks
        for a, b in zip(ddp, fsdp):
            assert a[1:4] == pytest.approx(b[1:4], rel=1e-4, abs=1e-6), (stage, a, b)


def test_fsdp_resume_continues_exactly(runs):
    for stage in ("s1", "s2"):
        full, resumed = _losses(runs["fsdp"], stage), _losses(runs["resumed"], stage)
        assert [r[0] for r in resumed] == [r[0] for r in full], stage
        for a, b in zip(full, resumed):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), (stage, a, b)


def test_fsdp_checkpoints_are_whole_and_match_ddp(runs):
    ddp, _, _ = load_checkpoint(runs["ddp"] / "final")
    fsdp, tok, _ = load_checkpoint(runs["fsdp"] / "final")
    assert fsdp.has_lora and fsdp.trajectory_projector.out_features == K * T * 2
    a, b = ddp.state_dict(), fsdp.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    with torch.no_grad():
        gen = fsdp.generate(torch.tensor([tok.bos_token_id]), max_new_tokens=2, tokenizer=tok)
    assert gen[0].trajectories.shape[1:] == (K, T, 2)


def test_ddp_epochs_see_every_sample_once_per_pass_with_uneven_ranks(tmp_path):
    """9 samples over 2 ranks: parts of 4 and 5 give 2 and 3 batches of 2, so rank 0 steps once on weightless
    padding while rank 1 finishes the pass; then both start the next pass together, and the run ends after 2."""
    data = make_run(tmp_path / "run", n_shards=3, per_shard=3)
    out = tmp_path / "out"
    job = _torchrun(tmp_path, data, out, "strategy=ddp", "save_every=0", "stages.0.optim.max_steps=1",
                    "stages.1.optim.epochs=2", "stages.1.optim.grad_accum=1")
    assert job.returncode == 0, job.stderr[-4000:]
    rows = [json.loads(ln) for ln in (out / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert sum(r["examples"] for r in rows if r["epoch"] == 0) == 9
    assert sum(r["examples"] for r in rows) == 18


def test_fsdp_on_a_pretrained_base_saves_lora_and_heads_without_the_base(tmp_path):
    """A base LLM from a dir (as Vicuna): FSDP checkpoints reference it and gather only LoRA and the heads, and the
    step checkpoint holds exactly the weights of the step's (separately gathered) resumable state."""
    from safetensors.torch import load_file

    from model.factory import TinyLlamaSettings, tiny_llama
    from model.tokenizer import train_tokenizer
    from tests.train_helpers import captions

    tok = train_tokenizer(captions(), vocab_size=300)
    base = tmp_path / "base-llm"
    tiny_llama(tok, TinyLlamaSettings(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=300), seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    data = make_run(tmp_path / "run", n_shards=4, per_shard=4)
    out = tmp_path / "out"
    job = _torchrun(tmp_path, data, out, "strategy=fsdp", "base.kind=pretrained", f"base.llm={base}",
                    "save_every=2", "stop_at=2", "stages.0.optim.max_steps=1", "stages.0.lora=true",
                    "stages.0.trainable.llm=false")
    assert job.returncode != 0 and "s2: stopped at step 2" in job.stderr, job.stderr[-4000:]
    meta = json.loads((out / "s1" / "pite.json").read_text())
    assert meta["base"] == str(base) and not (out / "s1" / "base").exists()
    assert meta["lora"] == "lora"
    step = out / "s2" / "checkpoints" / "step-000002"
    model, _, _ = load_checkpoint(step)
    assert json.loads((step / "pite.json").read_text())["merged"] == ["merged/00"]  # s1's LoRA, merged
    params = dict(model.named_parameters())
    trained = load_file(str(step / "trainable.safetensors"))
    assert any("lora_" in k for k in trained) and any(k.startswith("trajectory_projector") for k in trained)
    for name, value in trained.items():
        torch.testing.assert_close(params.get(name, params.get(name.replace(".default.", "."))), value)
