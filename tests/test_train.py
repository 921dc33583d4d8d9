"""The trainer: resume equals an uninterrupted run, gradient accumulation, stage chaining, the final checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint
from model.labels import encode_prompt
from pipelines.train.recipe import StageRecipe
from pipelines.train.run import main, run
from pipelines.train.config import load_train_config
from pipelines.train.data import model_inputs
from pipelines.train.dist import Dist
from tests.train_helpers import D, K, T, losses, make_run, tiny_train_config

STAGES = [
    {"name": "s1", "labels": {"stage": 1}, "lora": False,
     "trainable": {"llm": True, "traj_head": False}, "optim": {"max_steps": 2, "warmup_steps": 1, "lr": 0.01}},
    {"name": "s2", "labels": {"stage": 2}, "traj_head_from_loc": True, "trainable": {"loc_head": False},
     "optim": {"max_steps": 6, "warmup_steps": 1, "lr": 0.01}},
    {"name": "s3", "labels": {"stage": 3}, "optim": {"max_steps": 2, "warmup_steps": 0, "lr": 0.005}},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), n_shards=4, per_shard=4)


def _config(tmp_path, data, stages, name="cfg.yaml", **top):
    cfg = tiny_train_config(data, stages, **top)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, data):
    path = _config(tmp_path, data, STAGES[:2], save_every=3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(load_train_config(path, [f"out={full}"]), Dist())
    # Killed right after step 3 of stage 2 (its checkpoint is written), then resumed from it.
    assert main(["--config", str(path), f"out={cut}", "stop_at=3"]) == 3
    assert (cut / "s2" / "checkpoints" / "step-000003" / "trainable.safetensors").is_file()
    assert len(losses(cut, "s2")) == 3
    assert main(["--config", str(path), f"out={cut}"]) == 0
    a, b = losses(full, "s2"), losses(cut, "s2")
    assert [r[0] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert ra == pytest.approx(rb, rel=1e-5, abs=1e-6)
    assert losses(full, "s1") == losses(cut, "s1")
    # The stage's resumable states are gone once it finished; its checkpoint and OUT/final are there.
    assert not (cut / "s2" / "checkpoints").exists()
    for out in (full, cut):
        assert json.loads((out / "final" / "pite.json").read_text())["extra"]["stage"] == "s2"


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data):
    """The L1/CE normalisers are global counts: 2 micro-batches of 2 = 1 batch of 4 (same examples, in order)."""
    stage = dict(STAGES[1], optim={"max_steps": 3, "warmup_steps": 0, "lr": 0.01, "grad_accum": 2})
    stage["traj_head_from_loc"] = False
    path = _config(tmp_path, data, [stage], **{"model": {"feat_dim": D, "n_points": K, "n_frames": T,
                                                         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}})
    run(load_train_config(path, [f"out={tmp_path / 'acc'}", "loader.epoch_batches=6"]), Dist())
    run(load_train_config(path, [f"out={tmp_path / 'big'}", "stages.0.optim.grad_accum=1",
                                 "loader.batch_size=4", "loader.epoch_batches=3"]), Dist())
    acc, big = losses(tmp_path / "acc", "s2"), losses(tmp_path / "big", "s2")
    assert len(acc) == len(big) == 3
    for ra, rb in zip(acc, big):
        assert ra == pytest.approx(rb, rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_three_stages_chain_and_the_final_checkpoint_generates(tmp_path, data):
    path = _config(tmp_path, data, STAGES, tensorboard=True)
    out = tmp_path / "out"
    summary = run(load_train_config(path, [f"out={out}", "stages.1.optim.max_steps=3"]), Dist())
    assert list(summary) == ["s1", "s2", "s3"]
    assert summary["s1"]["last"]["loc_loss"] > 0 and summary["s1"]["last"]["traj_loss"] == 0
    assert summary["s2"]["last"]["traj_loss"] > 0 and summary["s3"]["last"]["lm_loss"] > 0
    for stage in ("s1", "s2", "s3"):
        meta = json.loads((out / stage / "pite.json").read_text())
        assert meta["extra"]["complete"] and meta["lora"] == (None if stage == "s1" else "lora")
        assert list((out / stage / "tb").glob("events.*"))
    assert json.loads((out / "train.json").read_text())["stages"]["s3"]["steps"] == 2

    model, tok, template = load_checkpoint(out / "final")
    prompt = encode_prompt(tok, template, model.video_token_id, "Describe the video.", T)
    gens = model.generate(prompt, video_features=torch.randn(T, D), max_new_tokens=4, tokenizer=tok)
    assert gens[0].trajectories.shape[1:] == (K, T, 2) and gens[0].trajectories.shape[0] == len(gens[0].token_ids)


def test_a_stage_starts_from_the_previous_one_merged_with_its_heads(tmp_path, data):
    path = _config(tmp_path, data, STAGES[:2])
    out = tmp_path / "out"
    cfg = load_train_config(path, [f"out={out}", "stages.1.optim.max_steps=1", "stages.0.lora=true",
                                   "stages.0.trainable.llm=false"])
    run(cfg, Dist())
    prev, tok, _ = load_checkpoint(out / "s1")
    assert prev.has_lora
    recipe = StageRecipe(cfg, 1, out, Dist())
    recipe.setup()
    try:
        reps = K * T
        torch.testing.assert_close(recipe.model.trajectory_projector.weight,
                                   prev.localization_projector.weight.repeat(reps, 1))
        torch.testing.assert_close(recipe.model.vision_adapter.weight, prev.vision_adapter.weight)
        # s1's LoRA is merged into the base and s2's fresh one starts at zero: same function as s1's model.
        batch = next(iter(recipe.stream))
        inputs = model_inputs(batch)
        with torch.no_grad():
            recipe.model.eval(), prev.eval()
            torch.testing.assert_close(recipe.model(**inputs).logits, prev(**inputs).logits, rtol=1e-4, atol=1e-4)
        names = {n for n, p in recipe.model.named_parameters() if p.requires_grad}
        assert any("lora_A" in n for n in names) and "localization_projector.weight" not in names
    finally:
        recipe.close()


def test_config_errors_are_one_line(tmp_path, data, capsys):
    path = _config(tmp_path, data, STAGES[:1])
    assert main(["--config", str(path), f"out={tmp_path / 'o'}", "data=/nonexistent/run"]) == 2
    assert "data: /nonexistent/run is not a directory" in capsys.readouterr().err
    assert main(["--config", str(path), "stages.4.optim.lr=1"]) == 2
    assert "the config has 1 stages" in capsys.readouterr().err
    assert main(["--config", str(path), "stages.0.optim.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["--config", str(path), "launcher=slurm"]) == 2
    assert "launcher" in capsys.readouterr().err
    assert main(["--config", str(path), "strategy=zero3"]) == 2
    assert "strategy: expected ddp or fsdp" in capsys.readouterr().err
    # STAGES[0] trains the whole LLM: FSDP cannot shard bf16 embeddings with the fp32 heads in one group
    assert main(["--config", str(path), "strategy=fsdp", "base.dtype=bfloat16"]) == 2
    assert "strategy fsdp: a stage trains the whole LLM" in capsys.readouterr().err


def test_collate_of_a_stream_batch_feeds_the_model(tmp_path, data):
    """One real micro-batch through the stage-2 model: loss finite, both heads' counts as target_counts says."""
    from model.losses import target_counts

    path = _config(tmp_path, data, STAGES[1:2])
    cfg = load_train_config(path, [f"out={tmp_path / 'o'}"])
    recipe = StageRecipe(cfg, 0, tmp_path / "o", Dist()).setup()
    try:
        batch = next(iter(recipe.stream))
        inputs = model_inputs(batch)
        out = recipe.model(**inputs)
        counts = target_counts(inputs)
        assert torch.isfinite(out.loss) and int(out.counts["traj"]) == int(counts["traj"]) > 0
        assert int(out.counts["lm"]) == int(counts["lm"]) > 0
    finally:
        recipe.close()


def test_lr_scale_gives_a_part_its_own_learning_rate(tmp_path, data, capsys):
    from model.config import PiteConfig
    from model.factory import TinyLlamaSettings, build_tiny
    from pipelines.train.setup import param_groups

    model, _ = build_tiny(["a red ball"], PiteConfig(adapter="colour_slots", time_pointer=True),
                          TinyLlamaSettings(vocab_size=300))
    model.set_trainable(adapter=True, lora=False, loc_head=False, traj_head=False, llm=True)
    groups = param_groups(model, 1e-3, {"time_pointer": 5.0, "time_pointer.conv": 10.0}, "optim")
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {round(g["lr"], 6): {names[id(p)] for p in g["params"]} for g in groups}
    assert sorted(by_lr) == [1e-3, 5e-3, 1e-2]
    assert by_lr[1e-2] and all(n.startswith("time_pointer.conv.") for n in by_lr[1e-2])  # the longest prefix
    assert by_lr[5e-3] and all(n.startswith("time_pointer.") and ".conv." not in f".{n}" for n in by_lr[5e-3])
    assert not any(n.startswith("time_pointer.") for n in by_lr[1e-3])
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    # a prefix that names nothing that trains is an error, in one line from the command line too
    with pytest.raises(Exception, match="lr_scale"):
        param_groups(model, 1e-3, {"frame_readout": 2.0}, "optim")
    path = _config(tmp_path, data, STAGES[:1])
    assert main(["--config", str(path), f"out={tmp_path / 'o'}", "stages.0.optim.lr_scale.nope=2"]) == 2
    assert "stages[0].optim.lr_scale: ['nope']" in capsys.readouterr().err


@pytest.mark.slow
def test_a_step_checkpoint_answers_in_pite_infer(tmp_path):
    """checkpoints/step-N/ is a PiTe checkpoint too: it loads with the step's weights and `pite infer` answers."""
    import numpy as np

    from annotate.synthetic import encode_mp4
    from pipelines.cli import main as cli_main
    from safetensors.torch import load_file

    data = make_run(tmp_path / "run", n_shards=2, per_shard=4, feat_dim=768)  # thumbnail-sized features
    path = _config(tmp_path, data, [STAGES[1]], save_every=2)
    out = tmp_path / "out"
    assert main(["--config", str(path), f"out={out}", "model.feat_dim=768", "stop_at=2"]) == 3
    step = out / "s2" / "checkpoints" / "step-000002"
    model, _, _ = load_checkpoint(step)
    trained = load_file(str(step / "trainable.safetensors"))
    params = dict(model.named_parameters())
    for name, value in trained.items():
        ours = name.replace(".default.", ".")  # the trainer's live adapter vs the loaded (inference) one
        torch.testing.assert_close(params.get(name, params.get(ours)), value)
    frames = np.random.default_rng(0).integers(0, 255, (12, 48, 64, 3), dtype=np.uint8)
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_mp4(frames, 10.0))
    answer = tmp_path / "answer.json"
    assert cli_main(["infer", "--checkpoint", str(step), "--video", str(video), "--query", "Describe the video.",
                     "--max-new-tokens", "3", "--json", str(answer)]) == 0
    assert "answer" in json.loads(answer.read_text())
