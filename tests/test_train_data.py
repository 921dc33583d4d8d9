"""The training shard stream: real epochs (each sample once per pass), resampled epochs, node/worker splits,
determinism, resume, bad samples."""

from __future__ import annotations

import pytest
import torch

from annotate.errors import ConfigError
from model.config import LabelConfig
from model.conversation import get_template
from model.tokenizer import train_tokenizer
from model.losses import target_counts
from pipelines.shards import iter_members, shard_paths
from pipelines.train.epochs import epoch_parts
from pipelines.train.data import (ExampleBuilder, Position, ShardStream, TrainStream, is_heldout, make_loader,
                                  run_shards)
from tests.train_helpers import captions, corrupt_member, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), n_shards=4, per_shard=4)


@pytest.fixture(scope="module")
def builder():
    tok = train_tokenizer(captions(), vocab_size=300)
    return ExampleBuilder(tok, get_template("pite"), tok.convert_tokens_to_ids("<video>"), LabelConfig(stage=2))


def _keys_of_shard(run, i):
    return {k for k, _ in iter_members(shard_paths(run, i)["tar"])}


def _as(monkeypatch, rank, world, worker, workers):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("WORKER", str(worker))  # webdataset reads these when not inside a DataLoader worker
    monkeypatch.setenv("NUM_WORKERS", str(workers))


def _stream(run, builder, **kw):
    args = dict(seed=7, epoch=0, rank=0, world_size=1, num_workers=1, epoch_batches=6, shuffle_buffer=4)
    args.update(kw)
    return ShardStream(run_shards(run), builder, 2, **args)


def test_each_rank_and_worker_streams_its_own_shards(run, builder, monkeypatch):
    seen = {}
    for rank in range(2):
        for worker in range(2):
            _as(monkeypatch, rank, 2, worker, 2)
            stream = _stream(run, builder, rank=rank, world_size=2, num_workers=2, epoch_batches=8)
            keys = [k for b in stream for k in b["keys"]]
            assert len(keys) == 2 * 4  # 8 batches per rank = 4 per worker, 2 examples each
            seen[rank, worker] = set(keys)
    # rank r, worker w reads shards[r::2][w::2] = shard r + 2w: resampled, so only (and all of) that one here
    for (rank, worker), keys in seen.items():
        assert keys <= _keys_of_shard(run, rank + 2 * worker)
    assert len(set().union(*seen.values())) == sum(len(v) for v in seen.values())


def test_stream_is_a_pure_function_of_seed_epoch_rank_worker(run, builder, monkeypatch):
    _as(monkeypatch, 0, 1, 0, 1)

    def keys(**kw):
        return [k for b in _stream(run, builder, **kw) for k in b["keys"]]

    first = keys()
    assert keys() == first
    assert keys(epoch=1) != first
    assert keys(seed=8) != first
    assert len(first) == 12


def test_stream_refuses_to_run_as_another_rank(run, builder, monkeypatch):
    _as(monkeypatch, 1, 2, 0, 1)
    with pytest.raises(RuntimeError, match="set RANK and WORLD_SIZE"):
        next(iter(_stream(run, builder)))


def test_fewer_shards_than_ranks_times_workers_is_a_config_error(run, builder):
    with pytest.raises(ConfigError, match="4 shards for 2 ranks x 4 loader workers"):
        _stream(run, builder, world_size=2, num_workers=4)


def test_dataloader_epochs_have_a_fixed_length_and_resume_replays_the_rest(run, builder, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    args = dict(seed=3, rank=0, world_size=1, num_workers=2, epoch_batches=5, shuffle_buffer=4)
    stream = TrainStream(run_shards(run), builder, 2, **args)
    assert stream.epoch_batches == 6  # rounded up to a multiple of the 2 workers
    it = iter(stream)
    full = [next(it) for _ in range(9)]
    assert stream.position == Position(1, 3)
    # Workers alternate: two epochs of the same stream differ, the DataLoader order is exact.
    assert [b["keys"] for b in full[:6]] != [b["keys"] for b in full[6:9] + full[:3]]
    resumed = TrainStream(run_shards(run), builder, 2, position=Position(0, 4), **args)
    it2 = iter(resumed)
    again = [next(it2) for _ in range(5)]
    for a, b in zip(full[4:9], again):
        assert a["keys"] == b["keys"]
        assert (a["input_ids"] == b["input_ids"]).all()
    assert resumed.position == Position(1, 3)


def test_a_sample_that_fails_to_decode_is_skipped_and_counted(tmp_path, builder, monkeypatch):
    _as(monkeypatch, 0, 1, 0, 1)
    run = make_run(tmp_path / "bad", n_shards=1, per_shard=4)
    corrupt_member(run, 0, "clip-0002")
    stream = ShardStream(run_shards(run), builder, 1, seed=0, epoch=0, rank=0, world_size=1, num_workers=1,
                         epoch_batches=9, shuffle_buffer=1)
    batches = list(stream)
    keys = [k for b in batches for k in b["keys"]]
    skipped = sum(b["stats"]["skipped"] for b in batches)
    read = sum(b["stats"]["samples"] for b in batches)
    assert "clip-0002" not in keys and len(keys) == 9
    assert skipped >= 1 and read == len(keys) + skipped
    errors = [e for b in batches for e in b["stats"]["errors"]]
    assert any("clip-0002" in e and "traj.npy" in e for e in errors)


def test_heldout_split_by_key_hash(run, builder, monkeypatch):
    _as(monkeypatch, 0, 1, 0, 1)
    keys = [f"clip-{i:04d}" for i in range(16)]
    held = [k for k in keys if is_heldout(k, 0.3)]
    assert 0 < len(held) < 16 and held == [k for k in keys if is_heldout(k, 0.3)]
    seen = {k for b in _stream(run, builder, heldout_fraction=0.3, epoch_batches=20) for k in b["keys"]}
    assert seen and not seen & set(held)


def test_loader_batches_are_padded_with_position_ready_masks(run, builder, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    stream = ShardStream(run_shards(run), builder, 3, seed=0, epoch=0, rank=0, world_size=1, num_workers=2,
                         epoch_batches=2, shuffle_buffer=2)
    batch = next(iter(make_loader(stream)))
    mask = batch["attention_mask"]
    assert batch["input_ids"].shape == mask.shape and mask.shape[0] == 3
    assert (mask.sum(1) == mask.sum(1).max()).any() and (mask[:, 0] == 1).all()  # right padding
    assert (batch["input_ids"][mask == 0] == builder.pad_token_id).all()
    assert batch["traj_target"].shape[1:] == (2, 4, 2) and len(batch["video_features"]) == 3


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("uneven"), n_shards=3, per_shard=5)


def test_epoch_parts_cut_the_shuffled_pass_into_near_equal_parts():
    parts = epoch_parts([5, 5, 5], seed=1, epoch=0, parts=4)
    assert [sum(e - s for _, s, e in p) for p in parts] == [3, 4, 4, 4]
    covered = sorted((shard, i) for p in parts for shard, s, e in p for i in range(s, e))
    assert covered == [(shard, i) for shard in range(3) for i in range(5)]
    orders = {tuple(run[0] for p in epoch_parts([5, 5, 5], seed=1, epoch=e, parts=1) for run in p) for e in range(6)}
    assert len(orders) > 1  # the shard order is drawn per epoch


def _one_pass(run, builder, rank, world, workers, epoch):
    stream = TrainStream(run_shards(run), builder, 2, seed=5, rank=rank, world_size=world, num_workers=workers,
                         shuffle_buffer=4, sampling="epoch", position=Position(epoch, 0))
    keys, it = [], iter(stream)
    while not stream.exhausted:
        batch = next(it)
        if batch["pad"]:
            assert batch["keys"] == [] and all(v == 0 for v in target_counts(batch).values())
        else:
            keys += batch["keys"]
    return keys


def test_an_epoch_covers_every_sample_exactly_once_over_2_ranks_x_2_workers(uneven, builder, monkeypatch):
    for name in ("WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    every = sorted(set().union(*(_keys_of_shard(uneven, i) for i in range(3))))
    passes = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            seen += _one_pass(uneven, builder, rank, 2, 2, epoch)
        assert sorted(seen) == every  # 15 samples: each once, none left out, over parts of 3 and 4
        passes.append(seen)
    assert passes[0] != passes[1]


def test_real_epoch_resume_at_an_odd_batch_replays_the_same_order(uneven, builder, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    args = dict(seed=9, rank=0, world_size=1, num_workers=2, shuffle_buffer=4, sampling="epoch")
    stream = TrainStream(run_shards(uneven), builder, 2, **args)
    it = iter(stream)
    full, positions = [], []
    for _ in range(11):
        positions.append(stream.position)
        full.append(next(it))
    assert any(b["pad"] for b in full)  # 15 samples in 8 batches, then padding
    for start in (3, 8):
        resumed = TrainStream(run_shards(uneven), builder, 2, position=positions[start], **args)
        it2 = iter(resumed)
        for a in full[start:]:
            b = next(it2)
            assert (a["keys"], a["pad"]) == (b["keys"], b["pad"]) and torch.equal(a["input_ids"], b["input_ids"])
        assert resumed.position == stream.position
