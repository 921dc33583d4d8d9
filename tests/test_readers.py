"""A run read with the tools users already have (pipelines/readers.py): Hugging Face `datasets`' webdataset builder,
plain `webdataset` in a torch DataLoader, and DuckDB on the index, each giving what `pite inspect --validate`
reads."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate.synthetic import WorldParams
from pipelines.readers import from_datasets_row, from_webdataset, index_query
from pipelines.shards import iter_members, iter_samples
from tests.annotate_helpers import write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
PARAMS = WorldParams(width=128, height=128, frames=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    write_manifest(root, 9, 5, PARAMS)
    out = root / "run"
    r = subprocess.run([sys.executable, "-m", "pipelines.annotate", "--config", str(CONFIG),
                        f"input={root / 'manifest.jsonl'}", f"out={out}", "synth.n=0", "num_frames=16",
                        "progress=false", "rows_per_shard=2", "executor=local"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return out


def validated(run: Path) -> dict:
    """key -> Sample, as `pite inspect --validate` reads them."""
    return {s.key: s for tar in sorted(glob.glob(str(run / "shards" / "*.tar"))) for s in iter_samples(tar)}


def same(got: dict, sample) -> None:
    assert got["meta"] == sample.meta
    for name in ("traj", "vis", "feat"):
        expected = getattr(sample, name)
        assert got[name].dtype == expected.dtype and got[name].shape == expected.shape, name
        assert np.array_equal(got[name], expected), name


def test_datasets_load_dataset_gives_every_sample_with_its_arrays(run, tmp_path):
    from datasets import load_dataset

    ds = load_dataset("webdataset", data_files={"train": str(run / "shards" / "*.tar")}, split="train",
                      cache_dir=str(tmp_path / "hf"))
    reference = validated(run)
    assert sorted(ds["__key__"]) == sorted(reference)
    for row in ds:
        got = from_datasets_row(row)
        same(got, reference[got["key"]])
        assert got["traj"].shape[1:] == (3, 16, 2) and got["feat"].shape == (16, 768)


def test_webdataset_in_a_dataloader_gives_the_same(run):
    import torch
    import webdataset as wds

    urls = sorted(glob.glob(str(run / "shards" / "*.tar")))
    loader = torch.utils.data.DataLoader(wds.WebDataset(urls, shardshuffle=False).map(from_webdataset),
                                         batch_size=None, num_workers=0)
    reference = validated(run)
    seen = [s["key"] for s in loader]
    assert sorted(seen) == sorted(reference)
    for sample in wds.WebDataset(urls, shardshuffle=False).map(from_webdataset):
        same(sample, reference[sample["key"]])


def test_duckdb_picks_samples_by_confidence_and_word_and_names_where_they_are(run):
    import duckdb
    import pyarrow.dataset as pads

    index = pads.dataset(str(run / "index")).to_table().to_pylist()
    word = next(w for w in index[0]["caption"].lower().split() if len(w) > 4).strip(",.")
    floor = 0.5
    expected = sorted((r["shard"], r["key"]) for r in index
                      if min(r["confidence"]) >= floor and word in r["caption"].lower())
    rows = duckdb.sql(index_query(str(run), word, floor)).fetchall()
    assert sorted((shard, key) for shard, key, *_ in rows) == expected and expected
    for shard, key, *_ in rows:  # the shard and key open the sample
        assert key in {k for k, _ in iter_members(run / "shards" / shard)}
