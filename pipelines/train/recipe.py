"""One training stage as a torchtune recipe (the run and its launchers: pipelines/train/run.py).

`StageRecipe` is one stage as a torchtune recipe: `setup` builds the model, optimiser, schedule and shard stream
(or loads them back from the newest step checkpoint it left), `train` runs the loop, `save` writes the
stage's checkpoint. The loop is the same in one process, under torchrun and inside a Ray Train worker: only
`Dist` (pipelines/train/dist.py) differs.

Loss normalisation (docs/design.md, "Readout rule"): each loss is its local sum over the global count of what it averages
(LM tokens, supervised phrases, visible points) summed over the accumulation micro-batches and all-reduced over
ranks; DDP (and FSDP's reduce-scatter) average gradients over ranks, so the loss is multiplied by the world size.

`strategy: ddp` (default) replicates the model on every rank; `strategy: fsdp` shards it (FSDP2, per decoder
layer; pipelines/train/fsdp.py), for bases that do not fit one GPU. Multi-process runs write checkpoints from
rank 0 and read the previous stage's dir on every rank: OUT must be on storage all nodes see.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch

from annotate.errors import ConfigError
from model.batch import to_device
from model.checkpoint import save_checkpoint, write_checkpoint
from model.losses import target_counts
from pipelines.train import fsdp as train_fsdp
from pipelines.config import to_dict
from pipelines.train.config import StageConfig, TrainConfig, stage_steps
from pipelines.train.data import (ExampleBuilder, Position, TrainStream, default_epoch_batches, merge_stats,
                                  model_inputs, run_shards, run_size, stream_seed)
from pipelines.train.dist import Dist
from pipelines.train.setup import cosine_schedule, param_groups, stage_start
from pipelines.train.state import load_state, newest, prune, save_state

log = logging.getLogger("pite.train")
LOSSES = ("lm", "loc", "traj")
CHECKPOINT_ENTRIES = ("pite.json", "heads.safetensors", "tokenizer", "base", "merged", "lora")


class StoppedEarly(RuntimeError):
    """Raised by `stop_at` (a kill at a known step, for resume tests)."""


# ---- one stage ------------------------------------------------------------------------------------------------


class StageRecipe:
    def __init__(self, cfg: TrainConfig, index: int, out: Path, dist: Dist):
        self.cfg, self.index, self.out, self.dist = cfg, index, out, dist
        self.stage: StageConfig = cfg.stages[index]
        self.dir = out / self.stage.name
        self.max_steps = stage_steps(cfg, self.stage)
        self.epochs = 0 if cfg.max_steps > 0 else self.stage.optim.epochs  # > 0: the stage counts real passes
        self.step = 0
        self.history: list[dict] = []

    # -- setup --

    def build_model(self, dist: Dist):
        """The stage's model before any wrapping: its start (previous stage merged, or fresh), LoRA, what trains."""
        cfg, stage = self.cfg, self.stage
        torch.manual_seed(stream_seed(cfg.seed, 1000 + self.index))  # LoRA init draws from the global generator
        model, self.tokenizer, self.template = stage_start(cfg, self.index, self.out, dist)
        model.config.lambda_lm, model.config.lambda_loc = stage.lambda_lm, stage.lambda_loc
        model.config.lambda_traj = stage.lambda_traj
        if stage.traj_head_from_loc:
            model.init_trajectory_from_localization()
        if stage.lora and cfg.model.lora.enabled:
            model.apply_lora(cfg.model.lora)
            model.set_lora_input_cast(cfg.speed.lora_input_cast)
        t = stage.trainable
        model.set_trainable(adapter=t.adapter, lora=t.lora, loc_head=t.loc_head, traj_head=t.traj_head, llm=t.llm,
                            time_pointer=t.time_pointer)
        if cfg.model.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model.to(dist.device)

    def setup(self) -> "StageRecipe":
        cfg, stage, dist = self.cfg, self.stage, self.dist
        self.model = model = self.build_model(dist)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"stages[{self.index}].trainable: nothing trains")
        self.fsdp = cfg.strategy == "fsdp" and dist.distributed
        self.net = model
        if self.fsdp:
            train_fsdp.shard(model, dist.device)  # in place: its parameters are DTensor shards from here on
        elif dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda"
                                               else None)
        self.params = [p for p in model.parameters() if p.requires_grad]  # after sharding, which swaps them
        o = stage.optim
        self.optimizer = torch.optim.AdamW(param_groups(model, o.lr, o.lr_scale, f"stages[{self.index}].optim"),
                                           lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.stream = self.build_stream()
        if self.epochs:
            self.max_steps = self.epochs * self.estimate_epoch_steps()
        self.scheduler = cosine_schedule(self.optimizer, o.warmup_steps, self.max_steps, o.min_lr_ratio)

        ckpt = newest(self.dir)
        if ckpt is not None:
            meta = load_state(ckpt, model, self.optimizer, self.scheduler, dist.rank, dist.world_size,
                              self.config_hash(), fsdp=self.fsdp)
            self.step, self.stream.position = meta["step"], Position(**meta["position"])
            log.info("%s: resumed at step %d from %s", stage.name, self.step, ckpt)
        elif dist.is_main and self.dir.exists():
            # No step checkpoint to continue from: what an earlier attempt logged here would mix with this one.
            shutil.rmtree(self.dir)
        dist.barrier()
        self._open_logs()
        n_train = sum(p.numel() for p in self.params)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("%s: %d/%d parameters train (%.2f%%), %s x %d micro-batches of %d, device %s, world %d",
                 stage.name, n_train, n_all, 100 * n_train / max(1, n_all),
                 f"{self.epochs} epochs (~{self.max_steps} steps)" if self.epochs else f"{self.max_steps} steps",
                 stage.optim.grad_accum, cfg.loader.batch_size, dist.device, dist.world_size)
        return self

    def build_stream(self) -> TrainStream:
        cfg, stage, dist, lc = self.cfg, self.stage, self.dist, self.cfg.loader
        data = stage.data or cfg.data
        builder = ExampleBuilder(self.tokenizer, self.template, self.model.video_token_id, stage.labels)
        epoch_batches = 0
        if lc.sampling == "resample":
            epoch_batches = lc.epoch_batches or default_epoch_batches(run_size(data), dist.world_size, lc.batch_size)
        return TrainStream(run_shards(data, key=f"stages[{self.index}].data" if stage.data else "data"),
                           builder, lc.batch_size, seed=stream_seed(cfg.seed, self.index), rank=dist.rank,
                           world_size=dist.world_size, num_workers=lc.num_workers, epoch_batches=epoch_batches,
                           shuffle_buffer=lc.shuffle_buffer, heldout_fraction=lc.heldout_fraction,
                           prefetch_factor=lc.prefetch_factor, sampling=lc.sampling,
                           group_by_length=lc.group_by_length)

    def estimate_epoch_steps(self) -> int:
        """Optimiser steps of one real pass, for the schedule: this rank's samples x examples per sample (measured
        on the run's first samples, the same on every rank) / batch size / accumulation."""
        examples = self.stream.samples_per_rank() * self.stream.examples_per_sample()
        return max(1, math.ceil(math.ceil(examples / self.cfg.loader.batch_size) / self.stage.optim.grad_accum))

    def finished(self) -> bool:
        if self.epochs:
            return self.stream.position.epoch >= self.epochs
        return self.step >= self.max_steps

    def config_hash(self) -> str:
        """What must not change between a checkpoint and its resume (the data position is per rank)."""
        import hashlib

        blob = {"seed": self.cfg.seed, "base": to_dict(self.cfg.base), "model": to_dict(self.cfg.model),
                "loader": to_dict(self.cfg.loader), "stage": to_dict(self.stage), "steps": self.max_steps,
                "index": self.index, "world": self.dist.world_size, "strategy": self.cfg.strategy}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _open_logs(self) -> None:
        self.metrics_file = self.tb = None
        if not self.dist.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "metrics.jsonl"
        if path.exists():  # resuming: forget the steps after the checkpoint, they are about to be redone
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= self.step]
            self.history = [json.loads(ln) for ln in kept]
            path.write_text("".join(ln + "\n" for ln in kept))
        self.metrics_file = open(path, "a")
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=self.step + 1)

    # -- train --

    def autocast(self):
        p = self.cfg.precision
        bf16 = p == "bf16" or (p == "auto" and self.dist.device.type == "cuda")
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def train(self) -> list[dict]:
        """The loop. Host syncs: one per step, reading whether every rank has finished its pass (from the
        collective issued before the forward, so it waits for nothing else); losses, grad norm and counts are read
        only on the steps that log a row."""
        from pipelines.progress import job_bar

        cfg, dist, o = self.cfg, self.dist, self.stage.optim
        self.net.train()
        batches = iter(self.stream)
        bar = job_bar(total=self.max_steps, initial=self.step, desc=self.stage.name, unit="step",
                      enabled=cfg.progress and dist.is_main)
        self.data_stats, self.since_row = {}, torch.zeros(2, dtype=torch.float64)  # examples, tokens
        while not self.finished():
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(o.grad_accum)]
            t_data = time.perf_counter() - t0
            # One collective before the forward: the global counts every loss is normalised by, and how many
            # ranks have finished this pass. It stays on the device: the forward reads the counts there.
            local = torch.zeros(4, dtype=torch.float64)
            for b in micro:
                c = target_counts(b)
                local[:3] += torch.tensor([float(c[k]) for k in LOSSES], dtype=torch.float64)
            local[3] = float(self.stream.exhausted)
            shared = dist.all_reduce(local, on_device=True)
            gcounts = {k: shared[i].to(dist.device, torch.float32) for i, k in enumerate(LOSSES)}
            sums = self._forward_backward(micro, gcounts)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.clip if o.clip > 0 else math.inf)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            epoch = self.stream.position.epoch
            # Every rank has finished this pass: all start the next one (the flag exists with real epochs only).
            if self.stream.real_epochs and float(shared[3]) >= dist.world_size:
                self.stream.next_epoch()
            bar.update(1)
            if self.step % max(1, cfg.log_every) == 0 or self.finished():
                row = self._row(sums, shared, grad_norm, lr, epoch, time.perf_counter() - t0, t_data)
                self.history.append(row)
                self._log(row, bar)
            if cfg.save_every and self.step % cfg.save_every == 0 and not self.finished():
                self.save_resumable()
            if cfg.kill_at and self.step == cfg.kill_at:
                self._die_once()
            if cfg.stop_at and self.step == cfg.stop_at:
                bar.close()
                raise StoppedEarly(f"{self.stage.name}: stopped at step {self.step} (stop_at)")
        bar.close()
        return self.history

    def _die_once(self) -> None:
        """`kill_at`: the last rank's process ends without a word, once per OUT (a marker file written first)."""
        marker = self.out / f".killed-{self.stage.name}-{self.step}"
        if self.dist.rank == self.dist.world_size - 1 and not marker.exists():
            marker.write_text("killed by kill_at\n")
            log.warning("%s: rank %d exits at step %d (kill_at)", self.stage.name, self.dist.rank, self.step)
            os._exit(1)

    def _forward_backward(self, micro: list[dict], gcounts: dict) -> torch.Tensor:
        """Gradients of the step's micro-batches (synchronised on the last); their loss sums, on the device."""
        dist = self.dist
        sums = torch.zeros(3, dtype=torch.float32, device=dist.device)
        for i, b in enumerate(micro):
            inputs = to_device(model_inputs(b), dist.device)
            last = i == len(micro) - 1
            if self.fsdp:
                sync = train_fsdp.no_gradient_sync(self.model, skip=not last)
            else:
                sync = nullcontext() if last or not dist.distributed else self.net.no_sync()
            with sync:
                with self.autocast():
                    out = self.net(**inputs, counts=gcounts, logits_at_labels=self.cfg.speed.logits_at_labels)
                (out.loss * dist.world_size).backward()
            sums += torch.stack([out.sums[k].float() for k in LOSSES])
            if not b["pad"]:
                self.since_row += torch.tensor([b["input_ids"].shape[0], float(b["attention_mask"].sum())],
                                               dtype=torch.float64)
            self._data_warnings(b["stats"])
            merge_stats(self.data_stats, b["stats"])
        return sums

    def _row(self, sums: torch.Tensor, shared: torch.Tensor, grad_norm, lr: float, epoch: int, seconds: float,
             data_seconds: float) -> dict:
        """The metrics row of this step (a collective: every rank calls it on the same steps). Losses are this
        step's; examples and tokens count since the previous row."""
        d = self.data_stats
        totals = self.dist.all_reduce(torch.cat([sums.double().cpu(), self.since_row, torch.tensor(
            [d.get("skipped", 0), d.get("samples", 0)], dtype=torch.float64)]))
        self.since_row.zero_()
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        counts = shared[:3].cpu()
        means = {k: float(totals[i] / max(1.0, float(counts[i]))) for i, k in enumerate(LOSSES)}
        c = self.model.config
        return {
            "stage": self.stage.name, "step": self.step,
            "loss": c.lambda_lm * means["lm"] + c.lambda_loc * means["loc"] + c.lambda_traj * means["traj"],
            **{f"{k}_loss": means[k] for k in LOSSES},
            **{f"n_{k}": int(counts[i]) for i, k in enumerate(LOSSES)},
            "lr": lr, "grad_norm": float(grad_norm), "examples": int(totals[3]), "tokens": int(totals[4]),
            "seconds": seconds, "data_seconds": data_seconds,
            "skipped_samples": int(totals[5]), "samples_read": int(totals[6]),
            "epoch": epoch, "epoch_batch": self.stream.position.batch,
        }

    def _data_warnings(self, stats: dict) -> None:
        if stats["skipped"]:
            log.warning("data: %d sample(s) skipped on rank %d: %s", stats["skipped"], self.dist.rank,
                        " | ".join(stats["errors"]))

    def _log(self, row: dict, bar) -> None:
        if not self.dist.is_main:
            return
        bar.set_postfix(loss=f"{row['loss']:.3f}", lm=f"{row['lm_loss']:.3f}", loc=f"{row['loc_loss']:.3f}",
                        traj=f"{row['traj_loss']:.3f}", refresh=False)
        self.metrics_file.write(json.dumps(row) + "\n")
        self.metrics_file.flush()
        if self.tb is not None:
            for k in ("loss", "lm_loss", "loc_loss", "traj_loss", "lr", "grad_norm"):
                self.tb.add_scalar(f"{self.stage.name}/{k}", row[k], self.step)

    # -- save --

    def checkpoint_writer(self) -> Optional[Callable[[Path, dict], None]]:
        """All ranks call it. On rank 0, a function writing the model's PiTe checkpoint into a dir (None elsewhere);
        under FSDP it holds the gathered LoRA and heads (the base only when it is a tiny one, stored whole)."""
        tok, template, main = self.tokenizer, self.template, self.dist.is_main
        if not self.fsdp:
            return (lambda out, extra: save_checkpoint(self.model, tok, out, template, extra=extra)) if main else None
        if self.model.base_source is None:
            # The rebuild runs on rank 0 alone: a one-process Dist, so its set-up takes part in no collective.
            clone = train_fsdp.unsharded_clone(self.model, lambda: self.build_model(Dist()), main)
            return (lambda out, extra: save_checkpoint(clone, tok, out, template, extra=extra)) if main else None
        extra_state, lora = train_fsdp.gather_checkpoint_parts(self.model)
        if not main:
            return None
        return lambda out, extra: write_checkpoint(Path(out), self.model, tok, template, extra_state, lora, extra)

    def checkpoint_extra(self, complete: bool) -> dict:
        last = self.history[-1] if self.history else {}
        return {"stage": self.stage.name, "labels_stage": self.stage.labels.stage, "step": self.step,
                "complete": complete, "losses": {k: last.get(k) for k in ("loss", "lm_loss", "loc_loss", "traj_loss")}}

    def save_resumable(self) -> Path:
        """checkpoints/step-N/: what resumes the stage (trainable weights, optimizer, schedule, data position,
        RNG) and a PiTe checkpoint of the model at this step, which `pite infer` and `pite evaluate` load."""
        gathered = None
        if self.fsdp:  # every rank takes part in the gathering
            gathered = (train_fsdp.full_trainable_state(self.model),
                        train_fsdp.full_optimizer_state(self.model, self.optimizer))
        writer, extra = self.checkpoint_writer(), self.checkpoint_extra(complete=False)
        path = save_state(self.dir, self.step, self.model, self.optimizer, self.scheduler,
                          self.stream.position.to_dict(), self.config_hash(), self.dist.rank, self.dist.world_size,
                          self.dist.barrier, gathered=gathered,
                          write_more=(lambda tmp: writer(tmp, extra)) if writer else None)
        if self.dist.is_main:
            prune(self.dir, self.cfg.keep_checkpoints)
        return path

    def save(self) -> Path:
        """The stage's PiTe checkpoint in OUT/<stage>/ (pite.json written last: its presence = stage done)."""
        failed: Optional[Exception] = None
        try:
            writer = self.checkpoint_writer()
            if writer is not None:
                writer(self.dir, self.checkpoint_extra(complete=True))
        except Exception as exc:  # noqa: BLE001  re-raised below, after the other ranks have heard of it
            failed = exc
        # Rank 0 tells the others whether it saved, so that a failure stops every rank instead of leaving them
        # at the barrier until the process group's timeout.
        if self.dist.all_reduce(torch.tensor([float(failed is not None)], dtype=torch.float64))[0] > 0:
            if failed is not None:
                raise failed
            raise RuntimeError(f"{self.stage.name}: rank 0 could not save the stage checkpoint (its log says why)")
        if self.dist.is_main:
            # The stage is done: its resumable states are not needed any more.
            shutil.rmtree(self.dir / "checkpoints", ignore_errors=True)
        self.dist.barrier()
        return self.dir

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.tb is not None:
            self.tb.close()
