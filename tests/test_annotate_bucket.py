"""Annotation from a bucket into a bucket (`input=s3://…`, `out=s3://…`), against a real S3-compatible server:
moto in its server mode, started on loopback by this module, reached through the standard AWS variables as a user's
S3 is.

The job is run as users run it, in its own process with a Ray of its own; the killed-and-rerun run must end with
every row once and the same shard bytes as a local run of the same config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from annotate.synthetic import WorldParams
from pipelines.shards import iter_members
from tests.annotate_helpers import write_manifest

pytest.importorskip("s3fs")
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
MOTO = Path(sys.executable).with_name("moto_server")
FAST = ["synth.n=0", "num_frames=16", "progress=false", "rows_per_shard=4", "batch_size=2", "report_samples=2"]
PARAMS = WorldParams(width=128, height=128, frames=30)
N = 10  # rows: shards of 4, 4, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """The AWS variables of a moto server on loopback (its own process: a real HTTP endpoint, not a patch)."""
    if not MOTO.exists():
        pytest.skip("moto_server is not installed (make setup installs moto[server])")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto_server did not start on {endpoint}")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    yield env
    server.terminate()
    server.wait(timeout=10)
    log.close()


def bucket_fs(env: dict):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"],
                             secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)


@pytest.fixture(scope="module")
def clips_in_bucket(s3_env, tmp_path_factory) -> tuple[Path, str]:
    """N synthetic clips (ground truth, given boxes): a local folder with its manifest, and the same in a bucket."""
    root = tmp_path_factory.mktemp("clips")
    write_manifest(root, 7, N, PARAMS)
    fs = bucket_fs(s3_env)
    fs.mkdir("pite-in")
    fs.mkdir("pite-out")
    fs.put(f"{root}/", "pite-in/clips/", recursive=True)
    return root, "s3://pite-in/clips/manifest.jsonl"


def job(env: dict, manifest: str, out: str, tmp_path: Path, *extra: str, staging: str = "staging") -> list[str]:
    return [sys.executable, "-m", "pipelines.annotate", "--config", str(CONFIG), f"input={manifest}", f"out={out}",
            f"staging={tmp_path / staging}", *FAST, *extra]


def job_env(s3_env: dict, marker: str = "") -> dict:
    env = {**os.environ, **s3_env, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if marker:
        env["PITE_BUCKET_TEST"] = marker
    return env


def leftover_processes(marker: str) -> list[str]:
    found = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PITE_BUCKET_TEST={marker}".encode() in env_file.read_bytes():
                cmd = env_file.with_name("cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                if "Agent" not in cmd:  # Ray's agents linger up to a minute after their raylet; they hold no CPU
                    found.append(cmd)
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_bucket_to_bucket_killed_and_rerun_equals_a_local_run(s3_env, clips_in_bucket, tmp_path):
    root, manifest = clips_in_bucket
    env = job_env(s3_env)
    local = subprocess.run(job(env, str(root / "manifest.jsonl"), str(tmp_path / "local"), tmp_path), cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stdout + local.stderr[-3000:]

    fs = bucket_fs(s3_env)
    out = "s3://pite-out/run"
    marker = f"{os.getpid()}-{time.time_ns()}"
    cmd = job(env, manifest, out, tmp_path)
    log = open(tmp_path / "killed.log", "wb")
    killed = subprocess.Popen(cmd, cwd=REPO, env=job_env(s3_env, marker), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        fs.invalidate_cache()
        if fs.exists("pite-out/run/index/pite-000000.parquet") or fs.exists("pite-out/run/index/pite-000001.parquet"):
            break
        time.sleep(0.05)
    assert killed.poll() is None, f"the job ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()}"
    killed.send_signal(signal.SIGKILL)  # the driver, mid-run: a shard is in the bucket, the others are not
    killed.wait()
    log.close()
    fs.invalidate_cache()
    done_at_kill = [k for k in fs.find("pite-out/run/index")]
    assert 1 <= len(done_at_kill) < 3, done_at_kill
    assert not fs.exists("pite-out/run/stats.json")
    assert fs.exists("pite-out/run/.run.lock")  # the killed driver's lock, taken over by the rerun (its pid is gone)
    deadline = time.time() + 60
    while leftover_processes(marker) and time.time() < deadline:
        time.sleep(0.5)

    # The rerun as on another machine: a staging folder of its own, so what it needs comes from the bucket.
    cmd = job(env, manifest, out, tmp_path, staging="elsewhere")
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert f"resumed: {len(done_at_kill)} shard(s) kept" in rerun.stdout
    assert f"{N} samples, 0 rejects" in rerun.stdout, rerun.stdout
    fs.invalidate_cache()
    stats = json.loads(fs.cat_file("pite-out/run/stats.json"))
    assert stats["written"] == N and stats["shards_resumed"] == len(done_at_kill) and stats["shards"] == 3
    assert stats["processed_this_run"] == N - 4 * len(done_at_kill)

    # Every row once, the same samples byte for byte as the local run (tars, index rows' keys).
    keys = []
    for i in range(3):
        name = f"pite-{i:06d}.tar"
        data = fs.cat_file(f"pite-out/run/shards/{name}")
        assert data == (tmp_path / "local" / "shards" / name).read_bytes(), name
        (tmp_path / name).write_bytes(data)
        keys += [k for k, _ in iter_members(tmp_path / name)]
    assert len(keys) == len(set(keys)) == N
    names = {k.split("pite-out/run/", 1)[1] for k in fs.find("pite-out/run")}
    assert not [n for n in names if n.startswith(".")], names  # no lock, no attempt marks left
    assert {"run.json", "config.yaml", "report.html", "stats.json"} <= names
    # Staging keeps only what a rerun on this machine could use again, never the shards it uploaded; the second
    # machine fetched only the input files of the shards it had to do.
    assert not list((tmp_path / "elsewhere").glob("shards/*.tar"))
    fetched = sorted(p.name for p in (tmp_path / "elsewhere" / "input").glob("pite-*.parquet"))
    assert len(fetched) == 3 - len(done_at_kill), fetched


def test_a_live_run_holds_the_bucket(s3_env, clips_in_bucket, tmp_path):
    """A second run into the same URL while the lock's holder is alive is refused in one line; exit 2."""
    from pipelines.annotate.lock import bucket_lock

    fs = bucket_fs(s3_env)
    with bucket_lock(fs, "pite-out/held/.run.lock", "s3://pite-out/held"):
        r = subprocess.run(job(job_env(s3_env), clips_in_bucket[1], "s3://pite-out/held", tmp_path), cwd=REPO,
                           env=job_env(s3_env), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "s3://pite-out/held is being written by another run (pid" in line, line
    assert not fs.exists("pite-out/held/.run.lock")  # released by its holder


@pytest.mark.parametrize("key,value,says", [
    ("out", "s3://no-such-bucket/run", "out: cannot list s3://no-such-bucket/run:"),
    ("input", "s3://pite-in/clips/{00000..00001}.tar", "video2dataset tars are not read from object storage"),
    ("input", "s3://pite-in/clips/absent.jsonl", "input: s3://pite-in/clips/absent.jsonl not found"),
    ("out", "ftp://host/run", "out: ftp:// is not a storage the job reads or writes"),
])
def test_bucket_problems_are_one_line_before_any_work(s3_env, clips_in_bucket, tmp_path, key, value, says):
    """Each refused in one line, exit 2, before anything is written to out= (a local folder for the input cases)."""
    args = {"input": clips_in_bucket[1], "out": str(tmp_path / "out")}
    args[key] = value
    r = subprocess.run(job(job_env(s3_env), args["input"], args["out"], tmp_path), cwd=REPO, env=job_env(s3_env),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "staging").exists()
