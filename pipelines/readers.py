"""A run's samples as numpy arrays, from the readers users already have.

    from datasets import load_dataset
    ds = load_dataset("webdataset", data_files={"train": "RUN/shards/*.tar"}, split="train")
    sample = from_datasets_row(ds[0])            # datasets gives the .npy members as nested lists

    import webdataset as wds, torch
    loader = torch.utils.data.DataLoader(wds.WebDataset("RUN/shards/pite-{000000..000009}.tar",
                                                        shardshuffle=False).map(from_webdataset), batch_size=None)

Both give {"key", "meta" (the json member), "traj" float16 (N, K, T, 2) in [0, 1] of the frame, "vis" bool (N, K, T),
"feat" float16 (T, D)}: the arrays `pite inspect --validate` reads. The index (`RUN/index/*.parquet`) is plain
Parquet for pyarrow, DuckDB or Polars; `INDEX_QUERY` is a DuckDB query that picks samples by confidence and a word of
the caption and gives the shard and key to open.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from annotate.schema import MEMBERS, Sample

INDEX_QUERY = """
SELECT shard, key, caption, list_min(confidence) AS least_confident
FROM read_parquet('{run}/index/*.parquet')
WHERE list_min(confidence) >= {min_confidence} AND caption ILIKE '%{word}%'
ORDER BY least_confident DESC, key
"""


def from_datasets_row(row: Mapping[str, Any]) -> dict:
    """A row of `datasets.load_dataset("webdataset", ...)` on a run's shards -> the sample's meta and arrays with
    their dtypes and shapes (an empty array keeps its (0, K, T, 2) shape, which a nested list cannot say)."""
    meta = row["json"]
    t, n = len(meta["frame_indices"]), len(meta["objects"])
    traj = np.asarray(row["traj.npy"], dtype=np.float16)
    vis = np.asarray(row["vis.npy"], dtype=bool)
    if n == 0:
        k = traj.shape[1] if traj.ndim == 4 else 0
        traj, vis = traj.reshape(0, k, t, 2), vis.reshape(0, k, t)
    return {"key": row["__key__"], "meta": meta, "traj": traj, "vis": vis,
            "feat": np.asarray(row["feat.npy"], dtype=np.float16)}


def from_webdataset(sample: Mapping[str, Any]) -> dict:
    """A raw `webdataset.WebDataset` sample (its members' bytes, no decoder) -> the same dict, read and checked by
    the schema's own reader (`Sample.from_members`: no pickles, dtypes and shapes as the contract says)."""
    s = Sample.from_members({m: sample[m] for m in MEMBERS}, sample["__key__"])
    return {"key": s.key, "meta": s.meta, "traj": s.traj, "vis": s.vis, "feat": s.feat}


def index_query(run: str, word: str, min_confidence: float = 0.0) -> str:
    """INDEX_QUERY for a run folder: samples whose least trusted object has at least `min_confidence` and whose
    caption holds `word`, most trusted first."""
    return INDEX_QUERY.format(run=run.rstrip("/"), word=word.replace("'", "''"), min_confidence=float(min_confidence))
