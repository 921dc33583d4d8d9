"""`bench/train.py --fast-vs-slow`: one training step with every step-time switch on (configs/train/*-7b.yaml) against
all of them off, at a shape where their costs show on a CPU, in one run.

The switches: LoRA dropout 0 and PEFT's input cast off (lora.dropout, speed.lora_input_cast), the LM head only at
labelled positions (speed.logits_at_labels), length-grouped batches (loader.group_by_length), no gradient
checkpointing (model.gradient_checkpointing). Both runs see the same examples in the same pools (grouping only
regroups a pool), start from the same weights and train the same number of steps at the recipes' learning rate;
`loss_rel_diff` compares their losses on 8 fixed held-out examples afterwards, beside how far training moved
that loss (`probe_loss_before_training`).
"""

from __future__ import annotations

import random
import time

import torch

from model.batch import collate
from model.config import LoraSettings, PiteConfig
from model.labels import IGNORE_INDEX, Example
from model.pite import PiteModel

FRAMES, POINTS, FEAT = 100, 3, 768


def stage2_example(rng: random.Random, key: str, vocab: int) -> Example:
    """Stage-2 shaped: system prompt, 100 frame positions, a question, a caption of 20-150 tokens (LM-labelled),
    three phrases with trajectories."""
    prompt, caption = 40, rng.randint(20, 150)
    n = prompt + FRAMES + 12 + caption
    ids = torch.randint(4, vocab - 1, (n,), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    ids[prompt:prompt + FRAMES] = vocab - 1  # the video placeholder: the last id
    labels = torch.full((n,), IGNORE_INDEX)
    labels[-caption:] = ids[-caption:]
    heads = torch.tensor(sorted(rng.sample(range(n - caption + 2, n), 3)))
    return Example(input_ids=ids, labels=labels, video=torch.randn(FRAMES, FEAT), head_pos=heads,
                   loc_target=torch.zeros(3, 2), loc_mask=torch.zeros(3, dtype=torch.bool),
                   traj_target=torch.rand(3, POINTS, FRAMES, 2), traj_mask=torch.ones(3, POINTS, FRAMES, dtype=torch.bool),
                   key=key)


def batches(examples: list[Example], batch_size: int, group: int) -> list[dict]:
    """Batches in order; with group > 1, each pool of `group` batches' examples sorted by length first."""
    out = []
    pool = batch_size * max(1, group)
    for start in range(0, len(examples), pool):
        chunk = examples[start:start + pool]
        if group > 1:
            chunk = sorted(chunk, key=lambda ex: len(ex.input_ids))
        out += [collate(chunk[i:i + batch_size], 0) for i in range(0, len(chunk), batch_size)]
    return out


def build(fast: bool, hidden: int, layers: int, vocab: int) -> PiteModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    llm = LlamaForCausalLM(config)
    torch.manual_seed(1)
    model = PiteModel(llm, PiteConfig(feat_dim=FEAT, n_points=POINTS, n_frames=FRAMES,
                                      lora=LoraSettings(r=64, alpha=128, dropout=0.0 if fast else 0.05)),
                      video_token_id=vocab - 1)
    model.apply_lora()
    model.set_lora_input_cast(not fast)
    model.set_trainable(adapter=True, lora=True, loc_head=False, traj_head=True)
    if not fast:
        model.enable_gradient_checkpointing()
    return model


def run(fast: bool, train: list[dict], probe: dict, args) -> dict:
    model = build(fast, args.fs_hidden, args.fs_layers, args.fs_vocab)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.fs_lr)
    model.train()
    times, padded, real = [], 0, 0
    for i, b in enumerate(train):
        t = time.perf_counter()
        out = model(**b, logits_at_labels=fast)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t)
        padded += b["input_ids"].numel()
        real += int(b["attention_mask"].sum())
    model.eval()
    with torch.no_grad():
        probe_loss = float(model(**probe).loss)
    return {"step_s": sum(times) / len(times), "padding_share": round(1 - real / padded, 3), "probe_loss": probe_loss}


def fast_vs_slow(args) -> dict:
    rng = random.Random(0)
    examples = [stage2_example(rng, f"ex{i}", args.fs_vocab) for i in range(args.fs_steps * args.fs_batch)]
    probe_rng = random.Random(99)
    probe = collate([stage2_example(probe_rng, f"probe{i}", args.fs_vocab) for i in range(8)], 0)
    with torch.no_grad():
        start = float(build(True, args.fs_hidden, args.fs_layers, args.fs_vocab).eval()(**probe).loss)
    slow = run(False, batches(examples, args.fs_batch, 1), probe, args)
    fast = run(True, batches(examples, args.fs_batch, args.fs_group), probe, args)
    return {
        "shape": {"hidden": args.fs_hidden, "layers": args.fs_layers, "vocab": args.fs_vocab, "lora_r": 64,
                  "batch": args.fs_batch, "steps": args.fs_steps, "group_by_length": args.fs_group,
                  "torch_threads": torch.get_num_threads()},
        "slow": {k: round(v, 4) for k, v in slow.items()}, "fast": {k: round(v, 4) for k, v in fast.items()},
        "speedup": round(slow["step_s"] / fast["step_s"], 3),
        "loss_rel_diff": round(abs(fast["probe_loss"] - slow["probe_loss"]) / slow["probe_loss"], 5),
        "probe_loss_before_training": round(start, 4),
    }
