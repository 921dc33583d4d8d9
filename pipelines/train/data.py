"""The training stream: annotation shards -> samples -> a stage's examples -> padded micro-batches (webdataset).

For one (seed, epoch, rank, worker):

    the run's shards (sorted) --split_by_node--> this rank's --split_by_worker--> this worker's shards
      --ResampledShards (deterministic, seeded by seed/epoch/rank/worker)--> tar members
      --decode (Sample.from_members; a bad sample is skipped and counted)--> shuffle buffer (same rng)
      --model.labels.build_examples(stage)--> batches of `batch_size` examples --model.batch.collate-->
      --with_epoch(batches per worker)

so the stream is a pure function of those four numbers. Every worker yields the same number of batches per
epoch and the DataLoader takes them round-robin, so "batch b of epoch e" names one batch: resuming replays the
epoch and each worker drops the batches already consumed before collating them (`ShardStream.skip`).

Each batch carries `batch["stats"]`: samples read, samples skipped (with the first error messages) and phrases
dropped by label alignment since the previous batch of that worker, which the trainer logs.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from annotate.errors import ConfigError, SchemaError
from annotate.schema import Sample
from model.batch import collate
from model.config import LabelConfig
from model.conversation import Template
from model.labels import build_examples
from pipelines.shards import list_done_shards, open_index, shard_paths

MAX_ERROR_MESSAGES = 3  # per batch: enough to see what is wrong without flooding the log


def run_shards(run_dir: str | Path, key: str = "data") -> list[str]:
    """The committed shard tars of an annotation run dir, in order (a clear error when there are none)."""
    run = Path(run_dir)
    if not str(run_dir):
        raise ConfigError(f"{key}: no annotation run dir given (e.g. {key}=runs/annotate/demo)")
    if not run.is_dir():
        raise ConfigError(f"{key}: {run} is not a directory (an annotation run: run `pite annotate` first)")
    done = list_done_shards(run)
    if not done:
        raise ConfigError(f"{key}: {run} has no complete shard (shards/, index/, rejects/ for each)")
    return [str(shard_paths(run, i)["tar"]) for i in done]


def run_size(run_dir: str | Path) -> int:
    """Samples in a run (from its index)."""
    return open_index(run_dir).count_rows()


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (hashlib, not hash(): the same in every process whatever PYTHONHASHSEED)."""
    blob = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def is_heldout(key: str, fraction: float) -> bool:
    """A fixed share of keys, chosen by a hash of the key: the same split in every run and on every rank."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return h / 2**64 < fraction


@dataclass
class ExampleBuilder:
    """Turns one decoded sample into a stage's training examples (picklable: it travels to the workers)."""

    tokenizer: object
    template: Template
    video_token_id: int
    labels: LabelConfig

    def __call__(self, sample: Sample, rng: random.Random):
        return build_examples(sample, self.tokenizer, self.template, self.video_token_id, self.labels, rng=rng)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id


class _Tally:
    """What a worker skipped or dropped since it last handed over a batch."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.samples, self.skipped, self.errors, self.dropped = 0, 0, [], Counter()

    def skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_ERROR_MESSAGES:
            self.errors.append(" ".join(message.split())[:300])

    def tar_error(self, exc: Exception) -> bool:
        """webdataset's handler for an unreadable tar: count it and go on with the next shard."""
        self.skip(f"{type(exc).__name__}: {exc}")
        return True

    def take(self) -> dict:
        out = {"samples": self.samples, "skipped": self.skipped, "errors": list(self.errors),
               "dropped": dict(self.dropped)}
        self.reset()
        return out


class ShardStream(IterableDataset):
    """One epoch of micro-batches for this rank (see the module doc). Iterate it through `make_loader`."""

    def __init__(self, shards: list[str], builder: ExampleBuilder, batch_size: int, *, seed: int, epoch: int,
                 rank: int, world_size: int, num_workers: int, epoch_batches: int, shuffle_buffer: int = 64,
                 heldout_fraction: float = 0.0, skip: int = 0):
        super().__init__()
        workers = max(1, num_workers)
        if len(shards) < world_size * workers:
            raise ConfigError(f"data: {len(shards)} shards for {world_size} ranks x {workers} loader workers: each "
                              f"worker streams its own shards, so write more shards (rows_per_shard) or use fewer "
                              f"loader.num_workers / ranks")
        if epoch_batches < 1 or batch_size < 1:
            raise ConfigError(f"loader: epoch_batches ({epoch_batches}) and batch_size ({batch_size}) must be >= 1")
        self.shards, self.builder, self.batch_size = list(shards), builder, batch_size
        self.seed, self.epoch, self.rank, self.world_size, self.workers = seed, epoch, rank, world_size, workers
        self.per_worker = -(-epoch_batches // workers)  # every worker yields as many: round-robin stays exact
        self.shuffle_buffer, self.heldout_fraction, self.skip = shuffle_buffer, heldout_fraction, skip

    @property
    def epoch_batches(self) -> int:
        """Batches this rank sees per epoch (epoch_batches rounded up to a multiple of the workers)."""
        return self.per_worker * self.workers

    def skip_for(self, worker: int) -> int:
        """Of the first `skip` batches (taken round-robin), how many came from `worker`."""
        return max(0, (self.skip - worker + self.workers - 1) // self.workers)

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if (rank, world) != (self.rank, self.world_size) or workers != self.workers:
            raise RuntimeError(f"data stream: built for rank {self.rank}/{self.world_size} with {self.workers} "
                               f"workers, runs as rank {rank}/{world} with {workers}: set RANK and WORLD_SIZE")
        # Explicit splits (not webdataset's defaults): rank r, worker w streams shards[r::R][w::W].
        mine = list(wds.split_by_worker(wds.split_by_node(iter(self.shards))))
        seed = stream_seed(self.seed, self.epoch, rank, worker)
        rng = random.Random(seed)
        tally = _Tally()
        pipeline = wds.DataPipeline(
            wds.ResampledShards(mine, seed=seed, deterministic=True, worker_seed=lambda: 0),
            wds.tarfile_to_samples(handler=tally.tar_error),
            lambda src: self._decode(src, tally),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
            lambda src: self._batches(src, tally, rng),
        ).with_epoch(self.per_worker)
        to_skip = self.skip_for(worker)
        for i, examples in enumerate(pipeline):
            if i < to_skip:
                tally.reset()  # consumed before the resume: logged then, so not counted twice
                continue
            batch = collate(examples, self.builder.pad_token_id)
            batch["keys"] = [ex.key for ex in examples]
            batch["stats"] = tally.take()
            yield batch

    def _decode(self, src, tally: _Tally):
        for members in src:
            key = members.get("__key__", "?")
            tally.samples += 1
            if self.heldout_fraction and is_heldout(key, self.heldout_fraction):
                continue
            try:
                sample = Sample.from_members({k: v for k, v in members.items() if not k.startswith("__")}, key)
            except SchemaError as exc:
                tally.skip(f"{members.get('__url__', '?')}: {exc}")
                continue
            yield sample

    def _batches(self, src, tally: _Tally, rng: random.Random):
        """Lists of `batch_size` examples (a sample may give several: stage 1 has one per grounding frame)."""
        pending = []
        for sample in src:
            try:
                examples, dropped = self.builder(sample, rng)
            except SchemaError as exc:
                tally.skip(str(exc))
                continue
            tally.dropped.update(dropped)
            pending.extend(examples)
            while len(pending) >= self.batch_size:
                yield pending[: self.batch_size]
                pending = pending[self.batch_size:]


def make_loader(stream: ShardStream, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over the stream's workers; batches are built in the workers (batch_size=None)."""
    workers = 0 if stream.workers == 1 else stream.workers
    # Its own generator: a DataLoader draws a base seed when it starts, and from the global RNG that draw would
    # shift the training RNG (dropout) by where epochs begin, so a resumed run would not replay exactly.
    generator = torch.Generator().manual_seed(stream_seed(stream.seed, stream.epoch, stream.rank))
    return DataLoader(stream, batch_size=None, num_workers=workers, in_order=True, generator=generator,
                      prefetch_factor=prefetch_factor if workers else None, persistent_workers=False)


@dataclass
class Position:
    """Where the stream is: the next batch to consume is batch `batch` of epoch `epoch` (per rank)."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}


class TrainStream:
    """Endless micro-batches over epochs for one rank, with a resumable `position`."""

    def __init__(self, shards: list[str], builder: ExampleBuilder, batch_size: int, *, seed: int, rank: int,
                 world_size: int, num_workers: int, epoch_batches: int, shuffle_buffer: int = 64,
                 heldout_fraction: float = 0.0, prefetch_factor: int = 2, position: Optional[Position] = None):
        self.kwargs = dict(shards=shards, builder=builder, batch_size=batch_size, seed=seed, rank=rank,
                           world_size=world_size, num_workers=num_workers, epoch_batches=epoch_batches,
                           shuffle_buffer=shuffle_buffer, heldout_fraction=heldout_fraction)
        self.prefetch_factor = prefetch_factor
        self.position = position or Position()
        self.epoch_batches = self.stream(0).epoch_batches  # also checks shards vs ranks x workers up front

    def stream(self, epoch: int, skip: int = 0) -> ShardStream:
        return ShardStream(epoch=epoch, skip=skip, **self.kwargs)

    def __iter__(self) -> Iterator[dict]:
        while True:
            pos = self.position
            if pos.batch >= self.epoch_batches:
                self.position = Position(pos.epoch + 1, 0)
                continue
            for batch in make_loader(self.stream(pos.epoch, pos.batch), self.prefetch_factor):
                self.position = Position(self.position.epoch, self.position.batch + 1)
                yield batch
            if self.position.batch < self.epoch_batches:
                raise RuntimeError(f"data stream: epoch {pos.epoch} ended after {self.position.batch} of "
                                   f"{self.epoch_batches} batches")


def default_epoch_batches(n_samples: int, world_size: int, batch_size: int) -> int:
    """About one pass over the run per epoch: this rank's share of samples / batch size (at least 1)."""
    return max(1, n_samples // max(1, world_size) // batch_size)


def model_inputs(batch: dict) -> dict:
    """The batch without its bookkeeping (what PiteModel.forward takes)."""
    return {k: v for k, v in batch.items() if k not in ("keys", "stats")}


def merge_stats(total: dict, stats: dict) -> dict:
    total["samples"] = total.get("samples", 0) + stats["samples"]
    total["skipped"] = total.get("skipped", 0) + stats["skipped"]
    dropped = Counter(total.get("dropped", {}))
    dropped.update(stats["dropped"])
    total["dropped"] = dict(dropped)
    return total


__all__ = ["ExampleBuilder", "Position", "ShardStream", "TrainStream", "default_epoch_batches", "is_heldout",
           "make_loader", "merge_stats", "model_inputs", "run_shards", "run_size", "stream_seed"]
