"""Real epochs: every sample once per pass, over all ranks and loader workers.

For each (seed, epoch) the shards are put in a shuffled order and their samples, counted from the run's index
(no sample is read to plan), are cut into ranks x workers contiguous parts of N // parts or N // parts + 1
samples. Part rank * workers + worker is what that loader worker streams: whole shards, and at most two partial
ones at its ends, so a worker reads about N / parts samples and no sample is read twice. Within a part a bounded
shuffle buffer mixes the samples (webdataset's, as before).

Parts can give different numbers of batches (a sample may give zero or several examples). A worker that has given
its last batch then gives weightless copies of it (no label, no head target: zero loss and zero gradient), so
every rank keeps stepping with the others until all have finished the pass; the trainer then starts the next
epoch on every rank at once (`TrainStream.next_epoch`). At most a few micro-batches per rank per epoch are such
padding, and they are not counted as examples.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow.parquet as pq

from model.encoding import IGNORE_INDEX
from pipelines.shards import iter_members

Run = tuple[int, int, int]  # (shard index, first sample, end sample) within one shard, in tar order


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (hashlib, not hash(): the same in every process whatever PYTHONHASHSEED)."""
    blob = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def index_file(tar: str | Path) -> Path:
    """RUN/index/<name>.parquet beside RUN/shards/<name>.tar (pipelines.shards' layout)."""
    tar = Path(tar)
    return tar.parents[1] / "index" / tar.with_suffix(".parquet").name


def shard_sizes(shards: list[str]) -> list[int]:
    """Samples in each shard: the row count of its index file (parquet metadata), or its members when it has none."""
    sizes = []
    for tar in shards:
        index = index_file(tar)
        if index.is_file():
            sizes.append(pq.read_metadata(index).num_rows)
        else:
            sizes.append(sum(1 for _ in iter_members(tar)))
    return sizes


def epoch_parts(sizes: list[int], seed: int, epoch: int, parts: int) -> list[list[Run]]:
    """The shards in an order drawn from (seed, epoch), their samples cut into `parts` contiguous parts; part j as
    runs of (shard, first, end). Every sample is in exactly one part; sizes differ by at most one."""
    order = list(range(len(sizes)))
    random.Random(stream_seed(seed, epoch, -1)).shuffle(order)
    total = sum(sizes)
    bounds = [j * total // parts for j in range(parts + 1)]
    out: list[list[Run]] = [[] for _ in range(parts)]
    start = 0
    for shard in order:
        end = start + sizes[shard]
        for j in range(parts):
            lo, hi = max(start, bounds[j]), min(end, bounds[j + 1])
            if lo < hi:
                out[j].append((shard, lo - start, hi - start))
        start = end
    return out


def weightless(batch: dict) -> dict:
    """The batch with no LM label and no head target: it adds nothing to any loss or gradient, and no count."""
    out = dict(batch)
    out["labels"] = batch["labels"].new_full(batch["labels"].shape, IGNORE_INDEX)
    out["loc_mask"] = batch["loc_mask"].new_zeros(batch["loc_mask"].shape)
    out["traj_mask"] = batch["traj_mask"].new_zeros(batch["traj_mask"].shape)
    return out


__all__ = ["epoch_parts", "index_file", "shard_sizes", "stream_seed", "weightless"]
