"""`ray job submit` of the annotation pipeline and of the trainer to a local Ray head on a loopback address (README "Running on a Ray cluster").

The heads come from tests/ray_heads.py (loopback only, auth off, torn down by marker).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipelines.shards import iter_samples, list_done_shards
from tests.ray_heads import RAY, start_head

REPO = Path(__file__).resolve().parents[1]
# What the job upload leaves out (the 100 MiB package limit; runs/ and data/ hold outputs and generated clips).
EXCLUDES = [".venv", "runs", "data", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info"]

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head():
    """A Ray head on a loopback address with 2 CPUs; yields (dashboard url, client env, temp dir); always stopped."""
    head = start_head(num_cpus=2, num_gpus=0)
    try:
        yield head.dashboard, head.env, head.temp_dir
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def make_manifest(tmp_path: Path, n: int = 6) -> Path:
    from pipelines.synth import main as synth_main

    out = tmp_path / "synth"
    assert synth_main(["--n", str(n), "--seed", "3", "--out", str(out), "--width", "128", "--height", "128",
                       "--frames", "30"]) == 0
    return out / "manifest.jsonl"


def test_ray_job_submit_annotates_the_demo_on_a_local_head(ray_head, tmp_path):
    dashboard, env, temp_dir = ray_head
    manifest = make_manifest(tmp_path)
    out = tmp_path / "run"
    sid = f"pite-test-{uuid.uuid4().hex[:8]}"
    runtime_env = json.dumps({"excludes": EXCLUDES})
    submit = [RAY, "job", "submit", "--address", dashboard, "--submission-id", sid, "--working-dir", str(REPO),
              "--runtime-env-json", runtime_env, "--",
              "python", "-m", "pipelines.annotate", "--config", "configs/annotate/demo.yaml",
              f"input={manifest}", f"out={out}", "synth.n=0", "rows_per_shard=4", "batch_size=2", "progress=false"]
    # Run from elsewhere: the working dir is uploaded from --working-dir, not from the client's cwd.
    job = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    log = job.stdout + job.stderr
    assert job.returncode == 0, f"ray job submit exited {job.returncode}:\n{log[-6000:]}"
    status = subprocess.run([RAY, "job", "status", "--address", dashboard, sid], env=env, capture_output=True,
                            text=True, timeout=60)
    assert f"Job '{sid}' succeeded" in status.stdout, status.stdout + status.stderr

    # The working dir the head unpacked holds the code and left the venv, runs/ and data/ behind.
    unpacked = [p for p in temp_dir.glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*") if p.is_dir()]
    assert len(unpacked) == 1, unpacked
    assert (unpacked[0] / "pipelines" / "annotate" / "actor.py").is_file()
    assert not [d for d in (".venv", "runs", "data", ".git") if (unpacked[0] / d).exists()]
    size = sum(p.stat().st_size for p in unpacked[0].rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"
    # The closing summary line comes back in the job's log.
    assert re.search(r"\b6 samples\b", log), log[-3000:]

    # The run layout, written by the job to the absolute `out`.
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["input_rows"], stats["written"], stats["rejected"]) == (6, 6, 0)
    assert stats["shards"] == 2 and list_done_shards(out) == [0, 1]
    index = ds.dataset(str(out / "index")).to_table().to_pandas()
    assert sorted(index["video_id"]) == [f"synth-{i:06d}" for i in range(6)]
    ids = []
    for tar in sorted((out / "shards").glob("pite-*.tar")):
        for sample in iter_samples(tar):
            ids.append(sample.meta["video_id"])
            n_objects = sample.traj.shape[0]
            assert n_objects >= 1 and sample.traj.shape == (n_objects, 3, 100, 2)  # K = 3 points, T = 100 frames
            assert sample.vis.shape == (n_objects, 3, 100) and sample.feat.shape[0] == 100
    assert ids == [f"synth-{i:06d}" for i in range(6)]  # in row order, each once
    assert (out / "report.html").is_file()

    # It ran on this head, not on a Ray of its own: the stage actors' logs are in the head's session.
    worker_logs = list(temp_dir.glob("session_latest/logs/worker-*"))
    assert any("ClipChain" in p.read_text(errors="replace") for p in worker_logs), "no ClipChain actor on the head"


def test_ray_job_submit_trains_with_two_ray_train_workers(ray_head, tmp_path):
    """README's `ray job submit ... -- python -m pipelines.train --config ...`: the trainer's driver connects to the
    head (RAY_ADDRESS from the job), TorchTrainer runs two gloo workers there, the checkpoint lands in `out`."""
    import yaml

    from model.checkpoint import load_checkpoint
    from tests.train_helpers import D, K, T, make_run

    dashboard, env, temp_dir = ray_head
    data = make_run(tmp_path / "run", n_shards=4, per_shard=4)
    cfg = {
        "data": str(data), "device": "cpu", "progress": False, "tensorboard": False, "seed": 0,
        "launcher": "ray", "num_workers": 2, "cpus_per_worker": 1,
        "base": {"tiny": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 32, "vocab_size": 300, "max_position_embeddings": 256}},
        "model": {"feat_dim": D, "n_points": K, "n_frames": T, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "loader": {"batch_size": 2, "num_workers": 1, "shuffle_buffer": 4, "epoch_batches": 5},
        "stages": [{"name": "s2", "labels": {"stage": 2}, "optim": {"max_steps": 3, "warmup_steps": 1, "lr": 0.01}}],
    }
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    sid = f"pite-train-{uuid.uuid4().hex[:8]}"
    submit = [RAY, "job", "submit", "--address", dashboard, "--submission-id", sid, "--working-dir", str(REPO),
              "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
              "python", "-m", "pipelines.train", "--config", str(config), f"out={out}"]
    job = subprocess.run(submit, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    log = job.stdout + job.stderr
    assert job.returncode == 0, f"ray job submit exited {job.returncode}:\n{log[-6000:]}"
    assert "s2: 3 steps" in log, log[-3000:]  # the driver's summary comes back in the job's log

    rows = [json.loads(ln) for ln in (out / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["examples"] == 4 for r in rows)  # two ranks of 2 examples, all-reduced
    model, tok, _ = load_checkpoint(out / "final")
    assert model.has_lora and model.trajectory_projector.out_features == K * T * 2
    # The two workers ran on this head: Ray Train's worker actors logged in its session.
    worker_logs = list(temp_dir.glob("session_latest/logs/worker-*"))
    assert any("RayTrainWorker" in p.read_text(errors="replace") for p in worker_logs), "no Ray Train worker here"
