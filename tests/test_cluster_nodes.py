"""A node lost mid-run, and a second submission of the same command while the first is live.

A two-node Ray cluster on this machine (a head and a worker node, both on a loopback address; tests/ray_heads.py).
The job runs as users run it, `python -m pipelines.annotate ... ray_address=HEAD`, and the worker node is killed
(SIGKILL to its raylet, workers and agents) once the first shard is on disk, with actors and rows in flight there.
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

from pipelines.shards import iter_members
from tests.ray_heads import kill_marked, start_head

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
N = 24

pytestmark = pytest.mark.slow


def job(head, manifest: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.annotate", "--config", str(CONFIG), f"input={manifest}", f"out={out}",
            f"ray_address={head.gcs_address}", "synth.n=0", "progress=false", "rows_per_shard=4", "batch_size=2",
            "num_frames=16", "report_samples=0"]


def test_a_lost_node_costs_no_row_and_a_second_run_on_the_same_out_is_refused(tmp_path):
    from pipelines.synth import main as synth_main

    assert synth_main(["--n", str(N), "--seed", "3", "--out", str(tmp_path / "synth"), "--width", "128",
                       "--height", "128", "--frames", "30"]) == 0
    manifest, out = tmp_path / "synth" / "manifest.jsonl", tmp_path / "run"
    head = start_head(num_cpus=2, num_gpus=0, dashboard=False)
    try:
        node = head.add_node(num_cpus=2)
        t0 = time.monotonic()
        first = subprocess.Popen(job(head, manifest, out), cwd=REPO, env=head.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        while not list((out / "shards").glob("pite-*.tar")) and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, "the job ended before the node could be killed"
        # The same command again, while the first is live: refused, in one line, before touching anything.
        second = subprocess.Popen(job(head, manifest, out), cwd=REPO, env=head.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        kill_marked(node, sigs=(9,))
        killed_at = time.monotonic() - t0
        _, second_err = second.communicate(timeout=120)
        _, stderr = first.communicate(timeout=500)
        seconds = time.monotonic() - t0
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert first.returncode == 0, stderr[-5000:]
    assert second.returncode == 2, second_err[-3000:]
    assert "is being written by another run" in second_err and len(second_err.strip().splitlines()) == 1

    stats = json.loads((out / "stats.json").read_text())
    assert (stats["input_rows"], stats["written"] + stats["rejected"]) == (N, N)
    keys = [k for tar in sorted((out / "shards").glob("pite-*.tar")) for k, _ in iter_members(tar)]
    rejects = [r for p in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    index = [r for p in sorted((out / "index").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    ids = [r["video_id"] for r in index] + [r["video_id"] for r in rejects]
    assert sorted(ids) == [f"synth-{i:06d}" for i in range(N)]  # every row exactly once
    assert len(keys) == len(set(keys)) == len(index)
    assert not (out / ".run.lock").exists()
    print(f"node kill: {N} rows, {stats['written']} samples, {stats['rejected']} rejects, "
          f"{stats['rows_retried_after_a_worker_death']} rows retried after the loss; killed at {killed_at:.1f} s, "
          f"done at {seconds:.1f} s")
