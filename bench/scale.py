"""The annotation job's own machinery at corpus scale: input split -> actor pool -> driver -> shard writer.

  .venv/bin/python bench/scale.py --rows 1000000                       # about 15 min on 2 cores
  .venv/bin/python bench/scale.py --rows 100000 --baseline 7bf3620     # and an older commit, in a git worktree
  .venv/bin/python bench/scale.py --bucket 5000 --no-resume --split-only # out= an s3:// bucket (loopback moto) vs a
                                                                       # folder, same rows, same run

The clip chain is replaced by `ReplayChain`, an actor that returns one prebuilt ~160 KB sample (T=100, three
objects of three points, 768-d features) under each row's own video_id, so only the job is measured: reading the
input, the calls, the driver's buffers and the shard commits. It is patched in here (`pipelines.annotate.actor.
ClipChain`); no config reaches it. Every row points at one tiny file, so the split's checks pass.

Prints one JSON object:
  driver_rows_per_s          rows committed per second of the annotation run (first to last shard)
  driver_rss_mb_at           the driver process's RSS at 100k, 500k and 1M rows committed (those reached)
  driver_bytes_per_row       slope of the driver's RSS over the second half of the run (least squares)
  split_rows_per_s           the input pass alone: `jsonl` (relative video paths), `tar` (video2dataset shards,
                             headers walked) and `tar_with_parquet` (the same with video2dataset's .parquet beside)
  resume_first_sample_s      after a kill at half the rows: from the rerun's start to its first new shard
  seconds                    wall time of each part
  bucket                     with --bucket N: rows/s of N rows into s3:// on a moto server on loopback and into a
                             folder, from each run's stats.json (processed / pipeline seconds), and the writer's
                             busy and blocking seconds (uploads ride in the writer thread)
A committed tar is truncated to 0 bytes by the bench as soon as its shard is complete (its index and rejects stay,
so the run and its resume see a done shard): 1M rows would otherwise write 160 GB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "annotate" / "demo.yaml"
JOB = ["synth.n=0", "rows_per_shard=256", "batch_size=8", "progress=false", "report_samples=0", "num_frames=100"]


# --- the replayed sample -------------------------------------------------------------------------------------------


def template_members() -> dict[str, bytes]:
    """A valid sample's members with the video_id "@@ID@@" in its json, replaced per row."""
    from annotate.schema import build_sample

    rng = np.random.default_rng(0)
    t, caption = 100, "a red ball rolls past a blue cube and a green star."
    spans = [(0, 10), (22, 33), (40, 52)]
    objects = [{"phrase": caption[s:e], "char_span": [s, e], "frame": 0, "source_frame": 0,
                "box": [0.1, 0.1, 0.5, 0.5], "score": 0.9, "mask_area": 0.1, "confidence": 0.8} for s, e in spans]
    sample = build_sample(video_id="@@ID@@", caption=caption, width=1280, height=720, fps=30.0, duration=10.0,
                          frame_indices=list(range(0, 300, 3)), frame_times=[i * 0.1 for i in range(t)],
                          objects=objects, traj=rng.uniform(0, 1, (3, 3, t, 2)), vis=np.ones((3, 3, t), bool),
                          feat=rng.standard_normal((t, 768)), num_points=3)
    return sample.to_members()


class ReplayChain:
    """Stands in for ClipChain: every row becomes the template sample under its own video_id."""

    def __init__(self, cfg, ledger_dir: str, sample_hash: str, decode_threads: int = 1):
        self.members = template_members()

    def ready(self) -> bool:
        return True

    def run(self, batch: dict) -> dict:
        return self(batch)

    def __call__(self, batch: dict) -> dict:
        from annotate.schema import MEMBERS

        ids = [str(v) for v in batch["video_id"]]
        n = len(ids)
        cols = {"row": np.asarray(batch["row"], dtype=np.int64), "video_id": ids, "ok": np.ones(n, bool),
                "stage": [""] * n, "error": [""] * n, "quality": ["{}"] * n, "timings": ['{"replay": 0.0}'] * n,
                "preview": [b""] * n, "confidence": np.full(n, 0.8), "note": [""] * n,
                "attempts": np.ones(n, np.int64)}
        for m in MEMBERS:
            data = self.members[m]
            cols["m_" + m.replace(".", "_")] = ([data.replace(b"@@ID@@", i.encode()) for i in ids] if m == "json"
                                                 else [data] * n)
        return {k: (np.array(v, dtype=object) if isinstance(v, list) else v) for k, v in cols.items()}


# --- inputs ----------------------------------------------------------------------------------------------------------


def write_manifest(folder: Path, rows: int) -> Path:
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    (folder / "videos" / "clip.mp4").write_bytes(b"\0" * 64)
    path = folder / "manifest.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            f.write(f'{{"video_id": "v{i:08d}", "video": "videos/clip.mp4", "caption": "A red ball rolls."}}\n')
    return path


def write_tars(folder: Path, tars: int, per_tar: int, sidecar: bool = False) -> str:
    """video2dataset-like shards: per sample an mp4, a txt and a json member; with `sidecar`, the .parquet
    video2dataset writes beside each tar (key, caption, status)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for t in range(tars):
        if sidecar:
            keys = [f"{t:05d}{i:04d}" for i in range(per_tar)]
            pq.write_table(pa.table({"key": keys, "caption": ["A red ball rolls."] * per_tar,
                                     "status": ["success"] * per_tar}), folder / f"{t:05d}.parquet")
        with tarfile.open(folder / f"{t:05d}.tar", "w") as tar:
            for i in range(per_tar):
                key = f"{t:05d}{i:04d}"
                for ext, data in (("mp4", b"\0" * 2048), ("txt", b"A red ball rolls."),
                                  ("json", json.dumps({"key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{tars - 1:05d}}}.tar")


def split_rate(spec: str, out: Path, root: Path) -> float:
    """Rows per second of the input pass alone (prepare_input into a fresh out), in a child of `root`'s code."""
    code = ("import sys, time; from pipelines.config import load_config; "
            "from pipelines.annotate.config import AnnotateJobConfig; from pipelines.annotate.inputs import "
            "prepare_input; from pathlib import Path; "
            f"cfg = load_config(AnnotateJobConfig, {str(CONFIG)!r}, ['input={spec}', 'out={out}', *{JOB!r}]); "
            f"t = time.perf_counter(); r = prepare_input(cfg, Path({str(out)!r}))[3]; "
            "print(r / (time.perf_counter() - t))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=child_env(root), capture_output=True,
                          text=True, check=True)
    return round(float(proc.stdout.strip().splitlines()[-1]), 1)


# --- the run, in a child process whose RSS is the driver's ---------------------------------------------------------


def child_env(root: Path) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(root)}
    env.pop("RAY_ADDRESS", None)
    return env


def child(manifest: str, out: str, samples: str) -> None:
    """The job with ReplayChain, and a thread that samples this process's RSS against the rows committed and
    truncates each committed tar."""
    import pipelines.annotate.actor as actor_module
    from pipelines.annotate import AnnotateJobConfig, run
    from pipelines.config import load_config

    actor_module.ClipChain = ReplayChain
    cfg = load_config(AnnotateJobConfig, CONFIG, [f"input={manifest}", f"out={out}", "num_cpus=2", *JOB])
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(Path(out), Path(samples), stop), daemon=True)
    watcher.start()
    try:
        run(cfg)
    finally:
        stop.set()
        watcher.join()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watch(out: Path, samples: Path, stop: threading.Event) -> None:
    seen: set[str] = set()
    with open(samples, "a") as f:
        while not stop.wait(1.0):
            done = {p.name for p in (out / "index").glob("pite-*.parquet")} if (out / "index").is_dir() else set()
            for name in done - seen:
                tar = out / "shards" / name.replace(".parquet", ".tar")
                if tar.is_file():
                    os.truncate(tar, 0)
            seen |= done
            f.write(json.dumps({"t": time.time(), "shards": len(done), "rss_mb": round(rss_mb(), 1)}) + "\n")
            f.flush()


def run_job(root: Path, manifest: Path, out: Path, samples: Path, kill_at_shards: int = 0) -> dict:
    """The child run (killed once `kill_at_shards` shards are done, if set); what it took."""
    # Run from `root` through -c (sys.path[0] is then that checkout, whose packages the run must use: a --baseline
    # commit's own), with this file run as __main__, so Ray pickles ReplayChain by value.
    script = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    cmd = [sys.executable, "-c", script, "--child", str(manifest), str(out), str(samples)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=root, env=child_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    before = len(list((out / "index").glob("*.parquet"))) if (out / "index").is_dir() else 0
    first_new = None
    while proc.poll() is None:
        time.sleep(0.2)
        done = len(list((out / "index").glob("*.parquet"))) if (out / "index").is_dir() else 0
        if first_new is None and done > before:
            first_new = time.time() - t0
        if kill_at_shards and done >= kill_at_shards:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    text = proc.stdout.read() if proc.stdout else ""
    if not kill_at_shards and proc.returncode != 0:
        raise SystemExit(f"scale: the run failed ({proc.returncode}):\n{text[-3000:]}")
    time.sleep(2)  # the killed run's Ray goes down with its process group
    return {"seconds": round(time.time() - t0, 1), "first_new_shard_s": None if first_new is None
            else round(first_new, 1), "tail": text.strip().splitlines()[-3:]}


def memory_figures(samples: Path, rows_per_shard: int = 256) -> dict:
    points = [json.loads(ln) for ln in samples.read_text().splitlines() if ln]
    rows = np.array([p["shards"] * rows_per_shard for p in points], float)
    rss = np.array([p["rss_mb"] for p in points], float)
    moving = np.flatnonzero(np.diff(rows) > 0) + 1
    at = {}
    for mark in (100_000, 500_000, 1_000_000):
        hit = np.flatnonzero(rows >= mark)
        if len(hit):
            at[f"{mark // 1000}k"] = round(float(rss[hit[0]]), 1)
    half = rows >= rows.max() / 2
    slope = float(np.polyfit(rows[half], rss[half] * 2**20, 1)[0]) if half.sum() > 2 and np.ptp(rows[half]) else None
    span = (points[moving[-1]]["t"] - points[moving[0]]["t"]) if len(moving) > 1 else 0
    rate = (rows[moving[-1]] - rows[moving[0]]) / span if span else None
    return {"driver_rss_mb_at": at, "driver_bytes_per_row": None if slope is None else round(slope, 1),
            "driver_rows_per_s": None if rate is None else round(float(rate), 1), "rss_mb_max": float(rss.max())}


def measure(root: Path, rows: int, work: Path, resume: bool, split_only: bool = False) -> dict:
    t0 = time.perf_counter()
    manifest = write_manifest(work / "in", rows)
    tars = write_tars(work / "tars", 20, 1000)
    with_parquet = write_tars(work / "tars-parquet", 20, 1000, sidecar=True)
    report = {"rows": rows, "code": str(root)}
    report["split_rows_per_s"] = {"jsonl": split_rate(str(manifest), work / "split-jsonl", root),
                                  "tar": split_rate(tars, work / "split-tar", root),
                                  "tar_with_parquet": split_rate(with_parquet, work / "split-tar-parquet", root)}
    if split_only:
        return report
    samples = work / "rss.jsonl"
    job = run_job(root, manifest, work / "run", samples)
    report.update(memory_figures(samples))
    report["seconds"] = {"run": job["seconds"]}
    if resume:
        out, shards = work / "resumed", -(-rows // 256)
        killed = run_job(root, manifest, out, work / "rss-killed.jsonl", kill_at_shards=shards // 2)
        again = run_job(root, manifest, out, work / "rss-resumed.jsonl")
        report["resume_first_sample_s"] = again["first_new_shard_s"]
        report["seconds"].update(killed_run=killed["seconds"], resumed_run=again["seconds"])
    report["seconds"]["all"] = round(time.perf_counter() - t0, 1)
    return report


def start_moto(log: Path) -> tuple[subprocess.Popen, dict]:
    """An S3-compatible server (moto's server mode) on a free loopback port, and the AWS variables that reach it."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    return server, {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def bucket_figures(root: Path, rows: int, work: Path) -> dict:
    """The same replayed rows into a folder and into a bucket: what uploading costs the driver."""
    import s3fs

    manifest = write_manifest(work / "in-bucket", rows)
    server, aws = start_moto(work / "moto.log")
    script = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    figures = {"rows": rows}
    try:
        fs = s3fs.S3FileSystem(endpoint_url=aws["AWS_ENDPOINT_URL"], key="bench", secret="bench")
        fs.mkdir("pite-scale")
        for name, out in (("folder", str(work / "folder-run")), ("bucket", "s3://pite-scale/run")):
            cmd = [sys.executable, "-c", script, "--child", str(manifest), out, str(work / f"rss-{name}.jsonl")]
            proc = subprocess.run(cmd, cwd=root, env={**child_env(root), **aws}, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"scale: the {name} run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            stats = json.loads(fs.cat_file("pite-scale/run/stats.json") if name == "bucket"
                               else (work / "folder-run" / "stats.json").read_text())
            sec = stats["seconds"]
            figures[name] = {"rows_per_s": round(stats["processed_this_run"] / sec["pipeline"], 1),
                             "driver_write_s": sec["driver_write"],
                             "driver_write_blocked_s": sec["driver_write_blocked"],
                             "driver_wait_s": sec["driver_wait"]}
    finally:
        server.terminate()
        server.wait(timeout=10)
    return figures


def worktree(commit: str, into: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(into), commit], cwd=ROOT, check=True,
                   capture_output=True)
    return into


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(*argv[1:4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--no-resume", action="store_true", help="skip the kill-at-half and resume runs")
    ap.add_argument("--split-only", action="store_true", help="only the input pass (seconds at 1M rows)")
    ap.add_argument("--baseline", help="also measure this commit (a git worktree), --baseline-rows rows")
    ap.add_argument("--baseline-rows", type=int, default=100_000)
    ap.add_argument("--bucket", type=int, default=0, help="also run this many rows into an s3:// bucket and a folder")
    args = ap.parse_args(argv)
    report = {}
    with tempfile.TemporaryDirectory(prefix="pite-scale-") as tmp:
        tmp = Path(tmp)
        report["this"] = measure(ROOT, args.rows, tmp / "this", not args.no_resume, args.split_only)
        if args.bucket:
            report["bucket"] = bucket_figures(ROOT, args.bucket, tmp / "bucket")
        if args.baseline:
            tree = worktree(args.baseline, tmp / "baseline-code")
            try:
                report["baseline"] = {"commit": args.baseline,
                                      **measure(tree, args.baseline_rows, tmp / "baseline", False, args.split_only)}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
