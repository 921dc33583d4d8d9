"""The production recipe (configs/annotate/pite143k.yaml) on a Ray head with logical GPUs and no CUDA.

A head started with `--num-gpus N` schedules N GPUs' worth of actors even without CUDA, so what a GPU cluster
decides (how many actors, which resources, whether it can ever start) is tested here; `device: auto` then runs the
models on the CPU. Weights are `pite weights random --size tiny`, in the on-disk form users download.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.shards import iter_samples
from tests.ray_heads import start_head

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "annotate" / "pite143k.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.cluster_gpu]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> list[str]:
    """The overrides that `pite weights random --size tiny` prints, as the README tells users to use them."""
    out = tmp_path_factory.mktemp("weights")
    done = subprocess.run([sys.executable, "-m", "pipelines.weights", "random", "--size", "tiny", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    overrides = [ln for ln in done.stdout.splitlines() if "=" in ln]
    if not any(o.startswith("track.weights=") for o in overrides):
        # Without `cotracker` no checkpoint is written; the preflight tests never load it, so a stand-in path does.
        stand_in = out / "no-cotracker.pth"
        stand_in.write_bytes(b"")
        overrides.append(f"track.weights={stand_in}")
    return overrides


def needs_cotracker() -> None:
    pytest.importorskip("cotracker", reason="the Makefile installs it from ../shared/third_party/co-tracker")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from pipelines.synth import main as synth_main

    out = tmp_path_factory.mktemp("synth")
    assert synth_main(["--n", "6", "--seed", "5", "--out", str(out), "--width", "128", "--height", "96",
                       "--frames", "24"]) == 0
    return out / "manifest.jsonl"


def annotate(head, manifest: Path, out: Path, *extra: str, timeout: float = 600):
    cmd = [sys.executable, "-m", "pipelines.annotate", "--config", str(RECIPE), f"input={manifest}", f"out={out}",
           f"ray_address={head.gcs_address}", "progress=false", "rows_per_shard=4", "batch_size=2", *extra]
    t0 = time.monotonic()
    # The head's client env: no RAY_* variables of a Ray this test process may have started (RAY_ADDRESS et al.).
    done = subprocess.run(cmd, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - t0


# Small enough for two actors on 2 CPU cores: tiny weights, CoTracker3 at a small working size, random boxes kept.
SMALL = ["decode_threads=2", "actor_memory_gb=1", "ground.box_threshold=0", "ground.text_threshold=0",
         "track.interp_shape=[96,128]", "features.batch_size=8"]


def test_the_production_recipe_runs_one_actor_per_gpu_to_the_end(tiny_weights, manifest, tmp_path):
    needs_cotracker()
    head = start_head(num_cpus=4, num_gpus=2, dashboard=False)
    try:
        out = tmp_path / "run"
        done, _ = annotate(head, manifest, out, "gpu_workers=2", *SMALL, *tiny_weights)
        assert done.returncode == 0, done.stderr[-5000:]
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["plan"] == {"actors": 2, "cpus_per_actor": 2.0, "gpus_per_actor": 1.0, "memory_gb_per_actor": 1.0}
    assert stats["written"] + stats["rejected"] == stats["input_rows"] == 6
    fates = {}
    for tar in sorted((out / "shards").glob("pite-*.tar")):
        for sample in iter_samples(tar):
            fates[sample.meta["video_id"]] = "sample"
            # The production backends ran: provenance names them.
            names = " ".join(sample.meta["provenance"]["backends"].values())
            assert "groundingdino" in names and "sam" in names and "cotracker" in names and "clip" in names
            assert sample.feat.shape == (100, 768)
    for p in (out / "rejects").glob("*.parquet"):
        for r in pq.read_table(p).to_pylist():
            assert r["video_id"] not in fates
            fates[r["video_id"]] = f"reject at {r['stage']}"
    assert sorted(fates) == [f"synth-{i:06d}" for i in range(6)]
    assert stats["written"] >= 1, fates  # the chain ran end to end, not only rejected


def test_the_recipe_on_a_cluster_without_gpus_is_refused_in_one_line_within_60_s(tiny_weights, manifest, tmp_path):
    head = start_head(num_cpus=4, num_gpus=0, dashboard=False)
    try:
        done, seconds = annotate(head, manifest, tmp_path / "run", *SMALL, *tiny_weights, timeout=120)
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("pite annotate:")]
    assert len(lines) == 1 and "needs GPUs" in lines[0] and "gpus_per_actor" in lines[0], done.stderr[-3000:]
    assert seconds < 60


def test_more_gpu_actors_than_the_cluster_holds_are_refused(tiny_weights, manifest, tmp_path):
    head = start_head(num_cpus=4, num_gpus=2, dashboard=False)
    try:
        done, _ = annotate(head, manifest, tmp_path / "run", "gpu_workers=3", *SMALL, *tiny_weights,
                           timeout=120)
        greedy, _ = annotate(head, manifest, tmp_path / "run2", "decode_threads=8", *SMALL[1:],
                             *tiny_weights, timeout=120)
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert done.returncode == 2 and "gpu_workers=3 actors cannot all be scheduled" in done.stderr, done.stderr[-3000:]
    assert "holds 2" in done.stderr
    assert greedy.returncode == 2 and "no node of the Ray cluster can hold one annotation actor" in greedy.stderr
    assert "decode_threads=8" in greedy.stderr
