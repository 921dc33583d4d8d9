"""Tiny annotation runs for the trainer's tests: a few shards of small samples (T frames, K points, D features)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from annotate.schema import build_sample
from pipelines.shards import ShardWriter, iter_members, shard_paths

T, K, D = 4, 2, 8
COLOURS = ["red", "blue", "green", "white"]
SHAPES = ["ball", "cube", "star", "box"]


def make_sample(i: int, n_frames: int = T, n_points: int = K, feat_dim: int = D):
    """Clip i: two objects whose positions are encoded in the features, so a model can learn them."""
    rng = np.random.default_rng(i)
    a, b = COLOURS[i % 4], SHAPES[(i // 4) % 4]
    caption = f"a {a} {b} moves past the {COLOURS[(i + 1) % 4]} ball."
    first = f"a {a} {b}"
    second = f"the {COLOURS[(i + 1) % 4]} ball"
    spans = [(0, len(first)), (caption.index(second), caption.index(second) + len(second))]
    traj = rng.uniform(0.1, 0.9, (2, n_points, n_frames, 2))
    vis = np.ones((2, n_points, n_frames), dtype=bool)
    vis[1, 0, -1] = False
    feat = rng.standard_normal((n_frames, feat_dim)) * 0.1
    feat[:, :4] = traj[:, 0].transpose(1, 0, 2).reshape(n_frames, 4)
    objects = [{"phrase": caption[s:e], "char_span": [s, e], "frame": 0, "source_frame": 0,
                "box": [0.1, 0.1, 0.5, 0.5], "score": 1.0, "mask_area": 0.1} for s, e in spans]
    return build_sample(
        video_id=f"clip-{i:04d}", caption=caption, width=64, height=64, fps=10.0, duration=n_frames / 10,
        frame_indices=list(range(n_frames)), frame_times=[t / 10 for t in range(n_frames)], objects=objects,
        traj=traj, vis=vis, feat=feat, num_points=n_points,
        events=[{"start": 0.0, "end": 0.2, "text": f"the {a} {b} moves"}],
    )


def make_run(root: Path, n_shards: int = 4, per_shard: int = 4, start: int = 0, **sizes) -> Path:
    """An annotation run dir with `n_shards` shards of `per_shard` samples (ids clip-0000, clip-0001, ...)."""
    i = start
    for s in range(n_shards):
        with ShardWriter(root, s) as w:
            for _ in range(per_shard):
                w.add(make_sample(i, **sizes))
                i += 1
    (root / "stats.json").write_text("{}")
    return root


def corrupt_member(root: Path, shard: int, key: str, suffix: str = "traj.npy") -> None:
    """Rewrite one shard with `key`'s `suffix` member replaced by bytes that are not an .npy."""
    path = shard_paths(root, shard)["tar"]
    samples = list(iter_members(path))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for k, members in samples:
            for sfx, data in members.items():
                if k == key and sfx == suffix:
                    data = b"not an npy file"
                info = tarfile.TarInfo(f"{k}.{sfx}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def captions(n: int = 64) -> list[str]:
    return [make_sample(i).meta["caption"] for i in range(min(n, 16))] + \
        [f"the {c} {s} moves" for c in COLOURS for s in SHAPES]


def tiny_train_config(data: Path, stages: list[dict], layers: int = 1, lora_dropout: float = 0.1, **top) -> dict:
    """A train config of a tiny random LLaMA on `data` (a make_run dir), CPU, no progress bar or TensorBoard."""
    return {
        "data": str(data), "device": "cpu", "progress": False, "tensorboard": False, "seed": 0,
        "base": {"tiny": {"hidden_size": 16, "num_hidden_layers": layers, "num_attention_heads": 2,
                          "intermediate_size": 32, "vocab_size": 300, "max_position_embeddings": 256}},
        "model": {"feat_dim": D, "n_points": K, "n_frames": T,
                  "lora": {"r": 4, "alpha": 8, "dropout": lora_dropout}},
        "loader": {"batch_size": 2, "num_workers": 1, "shuffle_buffer": 4, "epoch_batches": 5},
        "stages": stages, **top,
    }


def losses(out: Path, stage: str) -> list[tuple]:
    """(step, lm_loss, loc_loss, traj_loss) of each logged step of a stage's metrics.jsonl."""
    rows = [json.loads(ln) for ln in (out / stage / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lm_loss"], r["loc_loss"], r["traj_loss"]) for r in rows]
