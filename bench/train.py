"""Trainer throughput, printed as JSON: the shard loader alone vs the tiny model's training step; on a GPU
(`--gpu`), a 7B-shaped LLaMA (random init, bf16, LoRA r 64, gradient checkpointing) on PiTe-shaped sequences.

    .venv/bin/python bench/train.py [--data runs/annotate/demo] [--stage 2] [--workers 2] [--batch-size 8]
    .venv/bin/python bench/train.py --gpu [--gpu-batch 8 --text-tokens 250 --steps 10]
    .venv/bin/python bench/train.py --fast-vs-slow     # the step-time switches all on vs all off (bench/train_fast.py)

Loader goal: >= 200 samples/s on 2 cores, so the CPU demo is bound by the model, not by decoding. Timings are
not asserted anywhere; compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


from model.batch import to_device  # noqa: E402
from model.config import LabelConfig, LoraSettings, PiteConfig  # noqa: E402
from model.conversation import get_template  # noqa: E402
from model.factory import TinyLlamaSettings, tiny_llama  # noqa: E402
from model.pite import PiteModel  # noqa: E402
from model.time_pointer import attach_time_tokens  # noqa: E402
from model.tokenizer import train_tokenizer  # noqa: E402
from pipelines.train.data import ExampleBuilder, TrainStream, model_inputs, run_shards  # noqa: E402

# Dense bf16 peak (no sparsity) per GPU, for model FLOPs utilisation.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def loader_and_tiny_step(args) -> dict:
    import pyarrow.dataset as ds

    for name in ("RANK", "WORLD_SIZE"):
        os.environ.pop(name, None)
    captions = ds.dataset(str(Path(args.data) / "index")).to_table(columns=["caption"]).column("caption").to_pylist()
    tok = train_tokenizer(captions, vocab_size=600, split_digits=args.time_pointer)
    template = get_template("pite")
    builder = ExampleBuilder(tok, template, tok.convert_tokens_to_ids("<video>"), LabelConfig(stage=args.stage))

    def stream():
        return iter(TrainStream(run_shards(args.data), builder, args.batch_size, seed=0, rank=0, world_size=1,
                                num_workers=args.workers, epoch_batches=args.batches, shuffle_buffer=32))

    t0 = time.perf_counter()
    it = stream()
    first = next(it)
    t1 = time.perf_counter()
    n = first["input_ids"].shape[0]
    for _ in range(args.batches - 1):
        n += next(it)["input_ids"].shape[0]
    t2 = time.perf_counter()
    steady = (n - first["input_ids"].shape[0]) / (t2 - t1)

    # The demo's tiny model (configs/train/demo.yaml sizes), one full training step per batch.
    s = TinyLlamaSettings(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                          intermediate_size=2 * args.hidden, vocab_size=600)
    config = PiteConfig(lora=LoraSettings(r=16, alpha=32, dropout=0.0), adapter=args.adapter,
                        adapter_slots=args.slots, frame_readout=args.frame_readout,
                        frame_readout_source=args.frame_readout_source, time_pointer=args.time_pointer,
                        time_pointer_reads="embeddings")
    attach_time_tokens(config, tok)
    model = PiteModel(tiny_llama(tok, s), config, video_token_id=tok.convert_tokens_to_ids("<video>"))
    extra = model.tokens_per_frame - 1  # positions each frame adds once the adapter expands it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = stream()
    batches = [next(it) for _ in range(args.model_steps + 1)]
    times, tokens = [], 0
    for i, b in enumerate(batches):
        t = time.perf_counter()
        out = model(**model_inputs(b))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t)
            tokens += int(b["attention_mask"].sum()) + extra * int((b["input_ids"] == model.video_token_id).sum())
    step = sum(times) / len(times)
    return {
        "data": str(args.data), "stage": args.stage, "loader_workers": args.workers, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "loader_samples_per_s": round(steady, 1),
        "loader_samples_per_s_with_startup": round(n / (t2 - t0), 1),
        "loader_startup_s": round(t1 - t0, 2),
        "tiny_model": {"hidden": args.hidden, "layers": args.layers, "adapter": args.adapter,
                       "frame_readout": args.frame_readout and args.frame_readout_source,
                       "time_pointer": args.time_pointer,
                       "tokens_per_frame": model.tokens_per_frame,
                       "params": sum(p.numel() for p in model.parameters())},
        "tiny_step_s": round(step, 3),
        "tiny_step_samples_per_s": round(args.batch_size / step, 1),
        "tiny_step_tokens_per_s": round(tokens / sum(times), 0),
        "loader_vs_step": round(steady / (args.batch_size / step), 1),
    }


# The Vicuna v1.5 shapes (LLaMA-2): hidden, MLP width, layers. Stage 2's sequence: ~250 text tokens + 100 frames.
LLM_SHAPES = {"7b": (4096, 11008, 32), "13b": (5120, 13824, 40)}
STAGE2_TOKENS, STAGE2_SAMPLES, H100_BF16 = 350, 143_000, PEAK_BF16["H100"]


def step_flops_per_token(hidden: int, inter: int, layers: int, length: int) -> float:
    """Model FLOPs per token of a LoRA step on a frozen base: forward 2N and backward to the activations 2N over the
    decoder's matrices (N = layers x (4 h^2 + 3 h m); the frozen base needs no weight gradients, LoRA's are small),
    plus attention's scores and values, 4 x layers x length x hidden each way. The LM head runs at the labelled
    positions only (the recipes' logits_at_labels) and is left out."""
    n = layers * (4 * hidden * hidden + 3 * hidden * inter)
    return 4 * n + 2 * 4 * layers * length * hidden


def roofline() -> dict:
    """What an H100 can do at most for the 7B and 13B stage-2 steps: tokens/s and hours for one pass over
    PiTe-143k at 100 % and 40 % of its dense bf16 peak (arithmetic, no run)."""
    out = {}
    for name, (h, m, layers) in LLM_SHAPES.items():
        per_token = step_flops_per_token(h, m, layers, STAGE2_TOKENS)
        tokens = STAGE2_TOKENS * STAGE2_SAMPLES
        out[name] = {"flops_per_token": float(f"{per_token:.4g}"), **{
            f"at_{round(share * 100)}pct": {
                "tokens_per_s": round(share * H100_BF16 / per_token),
                "hours_stage2_pass_1gpu": round(tokens * per_token / (share * H100_BF16) / 3600, 2),
                "hours_stage2_pass_8gpu": round(tokens * per_token / (share * H100_BF16) / 3600 / 8, 3)}
            for share in (1.0, 0.4)}}
    return {"h100_bf16_flops": H100_BF16, "stage2_tokens_per_sample": STAGE2_TOKENS, "samples": STAGE2_SAMPLES,
            **out}


def gpu_7b(args, fast: bool = True) -> dict:
    """The 7B-shaped stage-2 step; `fast`: the 7B recipes' switches (LoRA dropout 0 and no input cast, logits at
    labelled positions, no gradient checkpointing), else all off (dropout 0.05, cast, full logits, checkpointing)."""
    device = torch.device(args.gpu_device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        return {"gpu": "skipped: no CUDA device"}
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # `--gpu-shape tiny` runs the same code on a CPU in seconds (bench/gpu_check.sh --cpu-smoke)
    hidden, inter, layers, heads = (4096, 11008, 32, 32) if args.gpu_shape == "7b" else (256, 688, 2, 4)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            llm = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
    init_s = time.perf_counter() - t0
    pite = PiteModel(llm, PiteConfig(lora=LoraSettings(r=64, alpha=128, dropout=0.0 if fast else 0.05),
                                     gradient_checkpointing=not fast), video_token_id=32000)
    pite.apply_lora()
    pite.set_lora_input_cast(not fast)
    pite.set_trainable(adapter=True, lora=True, loc_head=False, traj_head=True)
    if not fast:
        pite.enable_gradient_checkpointing()
    pite.to(device)
    params = [p for p in pite.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    # Stage-2-shaped: prefix, 100 frame tokens, question, answer (LM-labelled), 3 phrases with trajectories.
    b, text, frames = args.gpu_batch, args.text_tokens, 100
    length = text + frames
    ids = torch.randint(4, 32000, (b, length), device=device)
    ids[:, 40:40 + frames] = 32000
    labels = torch.full_like(ids, -100)
    answer = max(40 + frames, length - text // 2)  # the answer: the last half of the text, after the frames
    labels[:, answer:] = ids[:, answer:]
    batch = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
        "video_features": torch.randn(b, frames, 768, device=device),
        "head_batch": torch.arange(b, device=device).repeat_interleave(3),
        "head_pos": torch.tensor([length - 30, length - 20, length - 10], device=device).repeat(b),
        "traj_target": torch.rand(b * 3, 3, 100, 2, device=device),
        "traj_mask": torch.ones(b * 3, 3, 100, dtype=torch.bool, device=device),
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, counted = [], None
    for i in range(args.steps + 2):
        sync()
        t = time.perf_counter()
        if i == 0:  # a warm-up step, not timed: counted by torch's FLOP counter to check the formula below
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = pite(**to_device(batch, device), logits_at_labels=fast)
                out.loss.backward()
            counted = counter.get_total_flops()
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = pite(**to_device(batch, device), logits_at_labels=fast)
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    step = sum(times) / len(times)
    n_base = sum(p.numel() for p in llm.parameters() if not p.requires_grad)
    tokens = b * length
    # Model FLOPs: the decoder's (step_flops_per_token) at every token, the LM head's forward and backward at the
    # labelled positions (the model's work; the slow step's full logits and recomputation are overhead).
    labelled = int((labels != -100).sum())
    flops = (tokens * step_flops_per_token(hidden, inter, layers, length)
             + labelled * 4 * hidden * config.vocab_size)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    memory = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    del pite, llm, opt
    if cuda:
        torch.cuda.empty_cache()
    return {
        "gpu": name, "fast": fast, "init_s": round(init_s, 1), "batch": b, "seq_len": length,
        "base_params": n_base, "trainable_params": sum(p.numel() for p in params),
        "step_s": round(step, 3), "tokens_per_s": round(tokens / step, 0),
        "model_tflops_per_s": round(flops / step / 1e12, 1),
        "mfu": round(flops / step / peak, 3) if peak else None,
        "peak_memory_gib": memory, "shape": args.gpu_shape,
        "counted_flops_per_token": round(counted / tokens), "formula_flops_per_token": round(flops / tokens),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/annotate/demo")
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--model-steps", type=int, default=5)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--adapter", default="linear", choices=["linear", "colour_slots"])
    p.add_argument("--slots", type=int, default=8, help="colour_slots: tokens per frame")
    p.add_argument("--frame-readout", action="store_true", help="heads also point at each frame's tokens")
    p.add_argument("--frame-readout-source", default="tokens", choices=["hidden", "tokens"])
    p.add_argument("--time-pointer", action="store_true", help="frame numbers read by pointing at frames (--stage 3)")
    p.add_argument("--gpu", action="store_true", help="also the 7B-shaped GPU step (needs CUDA)")
    p.add_argument("--gpu-batch", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=250)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--gpu-compare", action="store_true", help="also the step with every speed switch off")
    p.add_argument("--gpu-device", default="cuda", help="cpu with --gpu-shape tiny: run the GPU step's code here")
    p.add_argument("--gpu-shape", default="7b", choices=["7b", "tiny"])
    p.add_argument("--fast-vs-slow", action="store_true", help="only the step-time switches, all on vs all off")
    p.add_argument("--fs-hidden", type=int, default=1024)
    p.add_argument("--fs-layers", type=int, default=4)
    p.add_argument("--fs-vocab", type=int, default=32000)
    p.add_argument("--fs-batch", type=int, default=4)
    p.add_argument("--fs-steps", type=int, default=20)
    p.add_argument("--fs-group", type=int, default=5, help="batches pooled for length grouping")
    p.add_argument("--fs-lr", type=float, default=1e-4, help="the 7B recipes' learning rate")
    args = p.parse_args(argv)
    if args.fast_vs_slow:
        from train_fast import fast_vs_slow  # beside this script, which Python puts first on sys.path

        print(json.dumps(fast_vs_slow(args), indent=1))
        return 0
    result = loader_and_tiny_step(args)
    result["roofline_h100"] = roofline()
    if args.gpu:
        result["gpu_7b"] = gpu_7b(args, fast=True)
        if args.gpu_compare and "step_s" in result["gpu_7b"]:
            slow = gpu_7b(args, fast=False)
            result["gpu_7b_slow"] = slow
            result["gpu_7b_speedup"] = round(slow["step_s"] / result["gpu_7b"]["step_s"], 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
