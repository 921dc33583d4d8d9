"""`executor=local`: the annotation job without Ray (one chain in the driver's process), as the GPU machine's check
runs it where Ray is not installed. Same shards, byte for byte, as the Ray executor; resume and stats as ever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotate.synthetic import WorldParams
from pipelines.shards import shard_paths
from tests.annotate_helpers import write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
FAST = ["synth.n=0", "num_frames=16", "progress=false", "rows_per_shard=3", "batch_size=2", "report_samples=1"]
PARAMS = WorldParams(width=128, height=128, frames=30)
# The job's CLI in a process where `import ray` fails, as on a machine without Ray.
NO_RAY = ("import sys; sys.modules['ray'] = None; from pipelines.annotate import main; "
          "sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("clips"), 11, 5, PARAMS)


def run(args: list[str], no_ray: bool) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", NO_RAY] if no_ray else [sys.executable, "-m", "pipelines.annotate"]
    return subprocess.run([*head, "--config", str(CONFIG), *args, *FAST], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_local_executor_without_ray_gives_the_ray_runs_shards(manifest, tmp_path):
    local = run([f"input={manifest}", f"out={tmp_path / 'local'}", "executor=local"], no_ray=True)
    assert local.returncode == 0, local.stdout + local.stderr[-3000:]
    assert "5 samples, 0 rejects" in local.stdout
    stats = json.loads((tmp_path / "local" / "stats.json").read_text())
    assert stats["plan"]["actors"] == 1 and stats["seconds"]["ray_startup"] == 0 and stats["versions"]["ray"]
    with_ray = run([f"input={manifest}", f"out={tmp_path / 'ray'}"], no_ray=False)
    assert with_ray.returncode == 0, with_ray.stdout + with_ray.stderr[-3000:]
    for i in range(2):
        assert shard_paths(tmp_path / "local", i)["tar"].read_bytes() == shard_paths(tmp_path / "ray", i)["tar"]\
            .read_bytes()

    # A rerun of the finished run keeps it; a lost shard is redone in-process.
    for p in shard_paths(tmp_path / "local", 1).values():
        p.unlink()
    again = run([f"input={manifest}", f"out={tmp_path / 'local'}", "executor=local"], no_ray=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed: 1 shard(s) kept (3 rows), 1 to do" in again.stdout
    assert shard_paths(tmp_path / "local", 1)["tar"].read_bytes() == shard_paths(tmp_path / "ray", 1)["tar"]\
        .read_bytes()


def test_an_unknown_executor_is_one_line(manifest, tmp_path):
    r = run([f"input={manifest}", f"out={tmp_path / 'x'}", "executor=dask"], no_ray=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "pite annotate: executor: expected ray or local, got 'dask'"
    assert not (tmp_path / "x").exists()
