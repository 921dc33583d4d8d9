"""The training stream: annotation shards -> samples -> a stage's examples -> padded micro-batches (webdataset).

For one (seed, epoch, rank, worker), with `loader.sampling: epoch` (the default):

    the run's shards, counted from its index --shuffled per (seed, epoch), cut into ranks x workers parts-->
      this worker's part (pipelines/train/epochs.py) --decode (Sample.from_members; a bad sample is skipped and
      counted)--> shuffle buffer (seeded the same) --model.labels.build_examples(stage)--> batches of
      `batch_size` examples (the last may be shorter) --model.batch.collate--> then weightless padding

so every sample is trained on once per epoch. With `sampling: resample`, rank r, worker w draws from
shards[r::R][w::W] with replacement (`wds.ResampledShards`) for `epoch_batches` per epoch instead.

The stream is a pure function of those four numbers, and the DataLoader takes the workers' batches round-robin,
so "batch b of epoch e" names one batch: resuming replays the epoch and each worker drops the batches already
consumed before collating them (`ShardStream.skip`).

Each batch carries `batch["stats"]`: samples read, samples skipped (with the first error messages) and phrases
dropped by label alignment since the previous batch of that worker, which the trainer logs; `batch["pad"]` marks
weightless padding.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
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
from pipelines.train.epochs import epoch_parts, shard_sizes, stream_seed, weightless

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
    """One epoch of micro-batches for this rank (see the module doc). Iterate it through `make_loader`.

    `sizes` (samples per shard) selects real epochs (pipelines/train/epochs.py): each worker streams its part of
    the pass, then weightless padding; without it, each worker resamples its own shards for `epoch_batches`.
    """

    def __init__(self, shards: list[str], builder: ExampleBuilder, batch_size: int, *, seed: int, epoch: int,
                 rank: int, world_size: int, num_workers: int, epoch_batches: int = 0, shuffle_buffer: int = 64,
                 heldout_fraction: float = 0.0, skip: int = 0, sizes: Optional[list[int]] = None,
                 group_by_length: int = 0):
        super().__init__()
        workers = max(1, num_workers)
        if sizes is None and len(shards) < world_size * workers:
            raise ConfigError(f"data: {len(shards)} shards for {world_size} ranks x {workers} loader workers: each "
                              f"worker streams its own shards, so write more shards (rows_per_shard) or use fewer "
                              f"loader.num_workers / ranks")
        if (sizes is None and epoch_batches < 1) or batch_size < 1:
            raise ConfigError(f"loader: epoch_batches ({epoch_batches}) and batch_size ({batch_size}) must be >= 1")
        self.shards, self.builder, self.batch_size = list(shards), builder, batch_size
        self.seed, self.epoch, self.rank, self.world_size, self.workers = seed, epoch, rank, world_size, workers
        self.per_worker = -(-epoch_batches // workers)  # every worker yields as many: round-robin stays exact
        self.shuffle_buffer, self.heldout_fraction, self.skip = shuffle_buffer, heldout_fraction, skip
        self.sizes, self.group_by_length = sizes, max(1, group_by_length)

    @property
    def epoch_batches(self) -> int:
        """Batches this rank sees per epoch (epoch_batches rounded up to a multiple of the workers)."""
        return self.per_worker * self.workers

    def skip_for(self, worker: int) -> int:
        """Of the first `skip` batches (taken round-robin), how many came from `worker`."""
        return max(0, (self.skip - worker + self.workers - 1) // self.workers)

    def __iter__(self) -> Iterator[dict]:
        rank, world, loader_worker, workers = wds.utils.pytorch_worker_info()
        if (rank, world) != (self.rank, self.world_size) or workers != self.workers:
            raise RuntimeError(f"data stream: built for rank {self.rank}/{self.world_size} with {self.workers} "
                               f"workers, runs as rank {rank}/{world} with {workers}: set RANK and WORLD_SIZE")
        # The DataLoader takes its workers round-robin from its first: resuming at batch b, that first worker plays
        # the one that yields batch b, so the order after a resume is the order the run would have had.
        worker = (loader_worker + self.skip) % self.workers
        seed = stream_seed(self.seed, self.epoch, rank, worker)
        rng = random.Random(seed)
        tally = _Tally()
        if self.sizes is None:
            # rank r, worker w resamples shards[r::R][w::W], with replacement
            mine = self.shards[rank::world][worker::self.workers]
            source = [wds.ResampledShards(mine, seed=seed, deterministic=True, worker_seed=lambda: 0),
                      wds.tarfile_to_samples(handler=tally.tar_error)]
        else:
            part = epoch_parts(self.sizes, self.seed, self.epoch, world * self.workers)[rank * self.workers + worker]
            source = [lambda: self._part_members(part, tally)]
        pipeline = wds.DataPipeline(
            *source,
            lambda src: self._decode(src, tally),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
            lambda src: self._batches(src, tally, rng, keep_last=self.sizes is not None),
        )
        if self.sizes is None:
            batches = ((examples, False, False) for examples in pipeline.with_epoch(self.per_worker))
        else:
            batches = self._padded(pipeline, tally, rng)
        to_skip = self.skip_for(worker)
        for i, (examples, pad, last) in enumerate(batches):
            if i < to_skip:
                tally.reset()  # consumed before the resume: logged then, so not counted twice
                continue
            batch = collate(examples, self.builder.pad_token_id)
            if pad:
                batch = weightless(batch)
            batch["keys"] = [] if pad else [ex.key for ex in examples]
            batch["stats"] = tally.take()
            # `done`: this worker has nothing more of this pass (its last real batch, or padding)
            batch["pad"], batch["done"], batch["worker"] = pad, pad or last, worker
            yield batch

    def _part_members(self, part: list, tally: _Tally):
        """The tar members of this worker's part of the pass: runs of (shard, first, end) samples."""
        expand = wds.tarfile_to_samples(handler=tally.tar_error)
        for shard, first, end in part:
            for i, members in enumerate(expand(iter([{"url": self.shards[shard]}]))):
                if i >= end:
                    break
                if i >= first:
                    yield members

    def _padded(self, batches, tally: _Tally, rng: random.Random):
        """(examples, pad=False, last) for the part's batches (one read ahead, so that the last one says so), then
        (the last of them, pad=True, True) for ever."""
        last = None
        for examples in batches:
            if last is not None:
                yield last, False, False
            last = examples
        if last is not None:
            yield last, False, True
        if last is None:  # a part that gave no example at all: pad with the run's first one
            expand = wds.tarfile_to_samples(handler=tally.tar_error)
            samples = self._decode(expand(iter({"url": url} for url in self.shards)), _Tally())
            last = next(self._batches(samples, _Tally(), rng, keep_last=True), None)
            if last is None:
                raise RuntimeError("data stream: no sample of the run gives a training example of this stage")
        while True:
            yield last, True, True

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

    def _batches(self, src, tally: _Tally, rng: random.Random, keep_last: bool = False):
        """Lists of `batch_size` examples (a sample may give several: stage 1 has one per grounding frame); with
        `keep_last`, the shorter last one too. With `group_by_length` G > 1, G batches' examples are pooled,
        sorted by length and cut, and those batches come in a shuffled order."""
        pending, pool = [], self.batch_size * self.group_by_length
        for sample in src:
            try:
                examples, dropped = self.builder(sample, rng)
            except SchemaError as exc:
                tally.skip(str(exc))
                continue
            tally.dropped.update(dropped)
            pending.extend(examples)
            while len(pending) >= pool:
                yield from self._cut(pending[:pool], rng)
                pending = pending[pool:]
        if keep_last and pending:
            yield from self._cut(pending, rng)

    def _cut(self, pool: list, rng: random.Random) -> list[list]:
        if self.group_by_length > 1:
            pool = sorted(pool, key=lambda ex: len(ex.input_ids))
        batches = [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        if self.group_by_length > 1:
            rng.shuffle(batches)
        return batches


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
    """Where the stream is: the next batch to consume is batch `batch` of epoch `epoch` (per rank); `padded`: the
    loader workers that have given their last batch of this epoch (real epochs)."""

    epoch: int = 0
    batch: int = 0
    padded: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "padded": list(self.padded)}


class TrainStream:
    """Endless micro-batches over epochs for one rank, with a resumable `position`.

    `sampling="epoch"`: real passes; the rank's pass is over when `exhausted`, and the trainer calls `next_epoch`
    once every rank is. `sampling="resample"`: each epoch is `epoch_batches` resampled batches.
    """

    def __init__(self, shards: list[str], builder: ExampleBuilder, batch_size: int, *, seed: int, rank: int,
                 world_size: int, num_workers: int, epoch_batches: int = 0, shuffle_buffer: int = 64,
                 heldout_fraction: float = 0.0, prefetch_factor: int = 2, position: Optional[Position] = None,
                 sampling: str = "resample", group_by_length: int = 0):
        if sampling not in ("epoch", "resample"):
            raise ConfigError(f"loader.sampling: expected epoch or resample, got {sampling!r}")
        self.sizes = shard_sizes(shards) if sampling == "epoch" else None
        self.kwargs = dict(shards=shards, builder=builder, batch_size=batch_size, seed=seed, rank=rank,
                           world_size=world_size, num_workers=num_workers, epoch_batches=epoch_batches,
                           shuffle_buffer=shuffle_buffer, heldout_fraction=heldout_fraction, sizes=self.sizes,
                           group_by_length=group_by_length)
        self.prefetch_factor = prefetch_factor
        self.position = position or Position()
        self.workers = max(1, num_workers)
        self.epoch_batches = self.stream(0).epoch_batches  # also checks shards vs ranks x workers up front

    @property
    def real_epochs(self) -> bool:
        return self.sizes is not None

    def stream(self, epoch: int, skip: int = 0) -> ShardStream:
        return ShardStream(epoch=epoch, skip=skip, **self.kwargs)

    def samples_per_rank(self) -> int:
        """The most samples a rank streams per real epoch (its workers' parts)."""
        parts = self.kwargs["world_size"] * self.workers
        return -(-sum(self.sizes) // parts) * self.workers

    def examples_per_sample(self, limit: int = 32) -> float:
        """Examples the stage builds per sample, on the run's first `limit` decodable samples (1.0 if none)."""
        stream = self.stream(0)
        expand = wds.tarfile_to_samples(handler=lambda exc: True)
        samples = stream._decode(expand(iter({"url": url} for url in stream.shards)), _Tally())
        counts = []
        rng = random.Random(0)
        for sample in samples:
            try:
                counts.append(len(stream.builder(sample, rng)[0]))
            except SchemaError:
                continue
            if len(counts) >= limit:
                break
        return sum(counts) / len(counts) if counts and sum(counts) else 1.0

    @property
    def exhausted(self) -> bool:
        """Real epochs: every loader worker of this rank has given its last batch of the epoch."""
        return self.real_epochs and len(self.position.padded) >= self.workers

    def next_epoch(self) -> None:
        self.position = Position(self.position.epoch + 1, 0)

    def __iter__(self) -> Iterator[dict]:
        while True:
            pos = self.position
            if not self.real_epochs and pos.batch >= self.epoch_batches:
                self.position = Position(pos.epoch + 1, 0)
                continue
            for batch in make_loader(self.stream(pos.epoch, pos.batch), self.prefetch_factor):
                worker = batch.pop("worker")
                padded = self.position.padded + ([worker] if batch.pop("done") and worker not in self.position.padded
                                                 else [])
                self.position = Position(pos.epoch, self.position.batch + 1, padded)
                yield batch
                if self.position.epoch != pos.epoch:  # next_epoch() was called
                    break
            else:
                if self.position.batch < self.epoch_batches:
                    raise RuntimeError(f"data stream: epoch {pos.epoch} ended after {self.position.batch} of "
                                       f"{self.epoch_batches} batches")


def default_epoch_batches(n_samples: int, world_size: int, batch_size: int) -> int:
    """About one pass over the run per epoch: this rank's share of samples / batch size (at least 1)."""
    return max(1, n_samples // max(1, world_size) // batch_size)


def model_inputs(batch: dict) -> dict:
    """The batch without its bookkeeping (what PiteModel.forward takes)."""
    return {k: v for k, v in batch.items() if k not in ("keys", "stats", "pad", "done", "worker")}


def merge_stats(total: dict, stats: dict) -> dict:
    total["samples"] = total.get("samples", 0) + stats["samples"]
    total["skipped"] = total.get("skipped", 0) + stats["skipped"]
    dropped = Counter(total.get("dropped", {}))
    dropped.update(stats["dropped"])
    total["dropped"] = dict(dropped)
    return total


__all__ = ["ExampleBuilder", "Position", "ShardStream", "TrainStream", "default_epoch_batches", "is_heldout",
           "make_loader", "merge_stats", "model_inputs", "run_shards", "run_size", "stream_seed"]
