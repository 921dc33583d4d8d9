"""The Ray annotation job (`pipelines.annotate`, issue 4): bad inputs, kill and resume, poison rows, determinism,
the readers of its outputs, and its three input forms (JSONL / CSV / Parquet manifests, video2dataset tars).

The in-process runs share one local Ray of this module (the job reuses an initialised Ray: a few seconds of start-up
saved per run); the kill-and-resume test runs the job as users do, in its own process with a Ray of its own. Clips
are small (128x128, 30 frames, T = 16 samples) and the config is the embedded demo (given boxes, GrabCut, LK,
thumbnail features), so a run costs mostly the start of its two actors.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from annotate.schema import sanitize_key
from annotate.synthetic import WorldParams, encode_mp4, make_clip
from pipelines import inspect as inspect_cmd
from pipelines.annotate import main as annotate_main
from pipelines.shards import iter_members, iter_samples, list_done_shards, list_partial_shards, shard_paths
from pipelines.synth import write_clip

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
T, K = 16, 3  # samples per clip (num_frames below) and points per object (the demo's)
# The demo config, small: no synthetic set generated, 16 samples per clip, small shards and batches.
FAST = ["synth.n=0", f"num_frames={T}", "progress=false", "rows_per_shard=4", "batch_size=2", "report_samples=2"]
PARAMS = WorldParams(width=128, height=128, frames=30)
N_GOOD = 10  # rows of the clean manifest: 3 shards of 4, 4, 2 rows


def annotate(manifest, out, *extra) -> int:
    return annotate_main(["--config", str(CONFIG), f"input={manifest}", f"out={out}", *FAST, *extra])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def tar_keys(out: Path) -> list[str]:
    return [key for tar in sorted((out / "shards").glob("pite-*.tar")) for key, _ in iter_members(tar)]


def rejects_of(out: Path) -> list[dict]:
    return sorted((r for p in sorted((out / "rejects").glob("pite-*.parquet")) for r in pq.read_table(p).to_pylist()),
                  key=lambda r: r["row"])


def hidden_leftovers(out: Path) -> list[str]:
    """Temporary files, partial shards and attempt marks a finished run must not leave behind."""
    temps = [str(p.relative_to(out)) for p in out.rglob("*.tmp")]
    attempts = [".attempts"] if (out / ".attempts").exists() else []
    return temps + attempts + [f"partial shard {i}" for i in list_partial_shards(out)]


# --- data ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the in-process runs of this module (2 CPUs: the two actors of the demo config)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_BACKEND_LOG_LEVEL", os.environ.get("RAY_BACKEND_LOG_LEVEL", "fatal"))  # as the job does
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, list[dict]]:
    """N_GOOD synthetic clips with ground truth and given boxes; their manifest rows (paths relative to the dir)."""
    root = tmp_path_factory.mktemp("clips")
    rows = [write_clip(make_clip(7, i, PARAMS), root, PARAMS) for i in range(N_GOOD)]
    return root, rows


@pytest.fixture(scope="module")
def good_manifest(clips) -> Path:
    root, rows = clips
    return write_jsonl(root / "manifest.jsonl", rows)


@pytest.fixture(scope="module")
def reference_run(ray_session, good_manifest, tmp_path_factory) -> Path:
    """An uninterrupted run of the clean manifest: what the other runs are compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert annotate(good_manifest, out) == 0
    return out


def moving_square(n: int, w: int, h: int, side: int) -> tuple[np.ndarray, list[float]]:
    """n frames of a red square sliding right on grey, and its box in frame 0 (for a given box)."""
    frames = np.full((n, h, w, 3), 110, np.uint8)
    y0 = h // 2 - side // 2
    for i in range(n):
        x0 = w // 8 + i * max(1, w // 64)
        frames[i, y0 : y0 + side, x0 : x0 + side] = (220, 40, 40)
    return frames, [float(w // 8), float(y0), float(w // 8 + side), float(y0 + side)]


def build_bad_inputs(root: Path, good: list[dict], good_root: Path) -> tuple[Path, list[tuple]]:
    """One manifest with every kind of bad (and odd but valid) input; per row what must become of it:
    ("sample",) or ("reject", stage, text the reason must contain)."""
    root.mkdir(parents=True, exist_ok=True)
    videos = root / "videos"
    videos.mkdir(exist_ok=True)

    def good_row(i: int, **change) -> dict:
        row = dict(good[i])
        row["video"] = str(good_root / row["video"])
        row["gt"] = str(good_root / row["gt"])
        row.update(change)
        return row

    mp4 = (good_root / good[0]["video"]).read_bytes()  # x264 without faststart: the index (moov) is at the end
    (videos / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    with_bad_packet = bytearray(mp4)
    import av

    with av.open(str(good_root / good[0]["video"])) as src:
        packets = [(p.pos, p.size) for p in src.demux(src.streams.video[0]) if p.size]
    pos, size = packets[5]
    with_bad_packet[pos : pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    (videos / "corrupt.mp4").write_bytes(bytes(with_bad_packet))
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("a red square on a grey floor\n")
    frames, box = moving_square(1, 128, 128, 40)
    (videos / "one-frame.mp4").write_bytes(encode_mp4(frames, 10.0))
    frames, box4k = moving_square(3, 3840, 2160, 600)
    (videos / "4k.mp4").write_bytes(encode_mp4(frames, 10.0, preset="ultrafast"))
    tall = WorldParams(width=96, height=160, frames=30)
    tall_row = write_clip(make_clip(7, 100, tall), root, tall)
    tall_row.update(video_id="vertical", video=str(root / tall_row["video"]), gt=str(root / tall_row["gt"]))

    long_caption = good[1]["caption"]
    long_caption += (" Meanwhile the grey floor stays still under a pale sky." * 200)[: 10_000 - len(long_caption)]
    assert len(long_caption) == 10_000
    square = {"phrase": "red square", "frame": 0, "box": box}
    decode_bad = ("reject", "decode")
    plan = [
        (good_row(0), ("sample",)),
        (good_row(1, video_id="clip.v1"), ("sample",)),  # a dot: the key may not hold one
        (good_row(2, video_id="dir/clip"), ("sample",)),  # a slash
        (good_row(3, video_id="my clip"), ("sample",)),  # a space
        (good_row(4, video_id="my_clip"), ("sample",)),  # what the space cleans to: still a distinct key
        (good_row(0, video_id="corrupt", video=str(videos / "corrupt.mp4")), decode_bad + ("corrupt",)),
        (good_row(0, video_id="truncated", video=str(videos / "truncated.mp4")), decode_bad + ("truncated",)),
        (good_row(0, video_id="zero-bytes", video=str(videos / "empty.mp4")), decode_bad + ("empty file (0 bytes)",)),
        (good_row(0, video_id="text", video=str(videos / "notes.mp4")), decode_bad + ("not a video",)),
        (good_row(0, video_id="missing", video=str(videos / "nope.mp4")), decode_bad + ("missing file",)),
        ({"video_id": "one-frame", "video": str(videos / "one-frame.mp4"), "caption": "a red square",
          "boxes": [square]}, ("sample",)),
        ({"video_id": "4k", "video": str(videos / "4k.mp4"), "caption": "a red square slides to the right",
          "boxes": [{"phrase": "red square", "frame": 0, "box": box4k}]}, ("sample",)),
        (tall_row, ("sample",)),
        (good_row(5, video_id="empty-caption", caption=""), ("reject", "nouns", "empty caption")),
        (good_row(5, video_id="no-nouns", caption="slowly moving around and then quickly away"),
         ("reject", "nouns", "no noun phrases in caption")),
        (good_row(6, video_id="emoji ✨", caption="🎬 Voilà: " + good[6]["caption"] + " 🚀 (très bien)"),
         ("sample",)),
        (good_row(1, video_id="long-caption", caption=long_caption), ("sample",)),
        (good_row(6, video_id="no-gt-file", gt=str(root / "nope.gt.npz")), ("sample",)),  # gt only feeds quality
        (good_row(0), ("reject", "manifest", "duplicate video_id")),  # row 0's id again: the first one wins
        ({"video_id": "no-caption", "video": str(good_root / good[0]["video"])},
         ("reject", "manifest", "missing required column 'caption'")),
    ]
    manifest = write_jsonl(root / "manifest.jsonl", [r for r, _ in plan])
    return manifest, [e for _, e in plan]


# --- 1. bad inputs -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_inputs_each_end_as_one_sample_or_one_readable_reject(ray_session, clips, tmp_path, capsys):
    good_root, good = clips
    manifest, expected = build_bad_inputs(tmp_path / "bad", good, good_root)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    out = tmp_path / "run"
    assert annotate(manifest, out) == 0
    summary = capsys.readouterr().out
    assert f"from {len(rows)} rows" in summary

    index = pads.dataset(str(out / "index")).to_table().to_pylist()
    samples = {r["video_id"]: r for r in index}
    rejects = rejects_of(out)
    by_row = {r["row"]: r for r in rejects}
    assert len(by_row) == len(rejects), "a row rejected twice"
    assert len(index) == len(samples), "a video_id written twice"
    for row, (raw, want) in enumerate(zip(rows, expected)):
        if want[0] == "sample":
            assert row not in by_row, f"row {row} ({raw['video_id']!r}) rejected: {by_row.get(row)}"
            assert raw["video_id"] in samples, f"row {row} ({raw['video_id']!r}) is neither sample nor reject"
        else:
            assert row in by_row, f"row {row} ({raw.get('video_id')!r}) should be a reject, got a sample"
            got = by_row[row]
            assert got["stage"] == want[1] and want[2] in got["error"], (row, got)
            assert got["video_id"] == raw.get("video_id", "")
            assert "\n" not in got["error"] and len(got["error"]) < 400  # one readable line
    assert len(samples) + len(rejects) == len(rows)  # each row exactly once

    stats = json.loads((out / "stats.json").read_text())
    assert stats["input_rows"] == len(rows)
    assert stats["written"] == len(samples) and stats["rejected"] == len(rejects)
    assert stats["written"] + stats["rejected"] == stats["input_rows"]
    assert sum(stats["rejected_by_stage"].values()) == stats["rejected"]
    assert [n for n in stats["notes"] if "no-gt-file" in n and "quality" in n and "nope.gt.npz" in n]
    assert stats["rejected_by_stage"] == {"decode": 5, "manifest": 2, "nouns": 2}

    # Distinct ids stay distinct keys, and the odd ones survive the round trip exactly.
    keys = {s["video_id"]: s["key"] for s in index}
    assert len(set(keys.values())) == len(keys)
    assert all("." not in k and "/" not in k and " " not in k for k in keys.values())
    metas = {s.meta["video_id"]: s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_samples(tar)}
    emoji = metas["emoji ✨"].meta
    assert emoji["caption"].startswith("🎬 Voilà: ") and emoji["objects"]
    for obj in emoji["objects"]:  # spans count characters, not bytes, of the emoji caption
        a, b = obj["char_span"]
        assert emoji["caption"][a:b] == obj["phrase"]
    assert len(metas["long-caption"].meta["caption"]) == 10_000
    assert (metas["4k"].meta["width"], metas["4k"].meta["height"]) == (3840, 2160)
    assert (metas["vertical"].meta["width"], metas["vertical"].meta["height"]) == (96, 160)
    one = metas["one-frame"]
    assert one.meta["frame_indices"] == [0] * T and one.traj.shape == (1, K, T, 2)
    assert hidden_leftovers(out) == []
    assert inspect_cmd.main([str(out), "--validate", "--frames", str(T), "--points", str(K)]) == 0


def test_a_run_that_writes_nothing_or_rejects_too_much_exits_1(ray_session, clips, tmp_path, capsys):
    root, rows = clips
    broken = []
    for i, r in enumerate(rows[:3]):  # files that exist but are no video: every row a decode reject
        (tmp_path / f"broken-{i}.mp4").write_text("not a video")
        broken.append({**r, "video_id": f"broken-{i}", "video": str(tmp_path / f"broken-{i}.mp4")})
    assert annotate(write_jsonl(tmp_path / "all-bad.jsonl", broken), tmp_path / "all-bad") == 1
    err = capsys.readouterr().err
    assert "pite annotate: failed: no sample written, all 3 rows rejected; most common reason: decode:" in err
    missing = [{**r, "video_id": f"gone-{i}", "video": str(tmp_path / f"gone-{i}.mp4")} for i, r in enumerate(rows[:3])]

    good = [{**r, "video": str(root / r["video"]), "gt": str(root / r["gt"])} for r in rows[:2]]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", good + missing[:2])
    assert annotate(mixed, tmp_path / "mixed", "max_reject_share=0.25") == 1
    assert "failed: 2 of 4 rows rejected (50%), above max_reject_share=0.25" in capsys.readouterr().err
    assert annotate(mixed, tmp_path / "mixed") == 0  # the default fails only a run with no sample (resumes here)


def test_the_manifest_is_checked_before_ray_starts(clips, tmp_path, capsys):
    """Videos in the wrong folder and a missing caption: counted and named, and refused (exit 2) with out= left
    free, before any Ray starts (no ray_session here: a run that got that far would start its own)."""
    root, rows = clips
    moved = [{**r, "video": "elsewhere/" + r["video"]} for r in rows[:3]]
    no_caption = [{k: v for k, v in r.items() if k != "caption"} for r in rows[3:5]]
    out = tmp_path / "checked"
    assert annotate(write_jsonl(root / "wrong-folder.jsonl", moved + no_caption), out) == 2
    got = capsys.readouterr()
    assert "annotate: input 5 rows, 0 to annotate; 3 videos not found (first: " in got.out and "elsewhere" in got.out
    assert "2 x missing required column 'caption'" in got.out
    err = [ln for ln in got.err.splitlines() if ln.startswith("pite annotate:")]
    assert len(err) == 1 and err[0].startswith("pite annotate: input: none of the 5 rows"), got.err
    assert not (out / "run.json").exists() and not (out / "input").exists()


def test_a_typo_in_a_backend_writes_nothing_to_out(ray_session, good_manifest, tmp_path, capsys):
    out = tmp_path / "typo"
    assert annotate(good_manifest, out, "segment.backend=sam2") == 2
    assert "segment.backend" in capsys.readouterr().err
    assert not out.exists()  # nothing written: the corrected command may use the same out=
    assert annotate(good_manifest, out) == 0


# --- 2. kill and resume ------------------------------------------------------------------------------------------


def processes_with(marker: str) -> list[str]:
    """Command lines of the live processes whose environment holds `marker` (a Ray session inherits it)."""
    found = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env_file.read_bytes():
                found.append(env_file.with_name("cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            continue  # ended meanwhile, or not ours to read
    return found


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(reference_run, good_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    marker = f"PITE_KILL_TEST={os.getpid()}-{time.time_ns()}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipelines.annotate", "--config", str(CONFIG), f"input={good_manifest}",
           f"out={out}", *FAST]
    log = open(tmp_path / "killed.log", "wb")
    job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    seen = lambda cmds: [c for c in cmds if "raylet" in c] and [c for c in cmds if "ClipChain" in c]  # noqa: E731
    alive: list[str] = []
    # Probe the processes (the raylet, the ClipChain actors) while waiting, not after the first shard: the /proc
    # scan takes long enough for the other shards to finish before the kill (seen once on a clean-clone CI run).
    while not list((out / "shards").glob("pite-*.tar")) and job.poll() is None and time.time() < deadline:
        if not seen(alive):
            alive = processes_with(marker)
        else:
            time.sleep(0.02)
    assert job.poll() is None, f"the job ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()}"
    if not seen(alive):  # the workers came up just before the first shard: look once more, as they still run
        alive = processes_with(marker)
    job.send_signal(signal.SIGKILL)  # mid-run: its first shard just appeared
    assert seen(alive), alive  # the probe saw the run's raylet and map workers while it ran
    job.wait()
    log.close()
    assert not (out / "stats.json").exists()
    done_at_kill = list_done_shards(out)
    assert len(done_at_kill) < 3, "the kill came after the last shard"
    # What the killed run left is already consistent for a reader: the catalogue lists only samples whose tar is
    # complete (the index is renamed last; temporary names start with a dot, which pyarrow skips).
    if (out / "index").is_dir():
        for row in pads.dataset(str(out / "index")).to_table().to_pylist():
            assert row["key"] in [k for k, _ in iter_members(out / "shards" / row["shard"])]

    # The killed run's Ray goes with it: raylet, GCS and workers (Ray's two agents take up to 60 s more: their web
    # servers' shutdown timeout; they hold no CPU). A rerun starts a Ray of its own either way.
    # 60 s, not 30: one run failed right after another Ray had stopped on this 2-core machine (not reproduced since).
    deadline = time.time() + 60
    while time.time() < deadline:
        left = [c for c in processes_with(marker) if "Agent" not in c]
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"processes of the killed run still alive: {left}"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-4000:]
    assert f"{N_GOOD} samples, 0 rejects" in rerun.stdout.splitlines()[-2], rerun.stdout  # the summary comes last
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards_resumed"] == len(done_at_kill) and stats["written"] == N_GOOD
    assert stats["processed_this_run"] == N_GOOD - 4 * len(done_at_kill)

    # Same samples as the uninterrupted run, each once, every shard readable, byte for byte the same.
    keys = tar_keys(out)
    assert keys == tar_keys(reference_run) and len(set(keys)) == len(keys) == N_GOOD
    for i in range(3):
        assert shard_paths(out, i)["tar"].read_bytes() == shard_paths(reference_run, i)["tar"].read_bytes()
    assert hidden_leftovers(out) == []
    assert inspect_cmd.main([str(out), "--validate"]) == 0

    # Re-running the finished command keeps everything and only rewrites the stats.
    tars = {p: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    assert annotate(good_manifest, out) == 0
    again = json.loads((out / "stats.json").read_text())
    assert (again["shards_resumed"], again["processed_this_run"], again["written"]) == (3, 0, N_GOOD)
    assert {p: p.read_bytes() for p in (out / "shards").glob("*.tar")} == tars
    # Resume checks what it resumes: another config or a changed manifest is refused, and the run is left as it is.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert annotate(good_manifest, out, "track.win_size=15") == 2
    assert "holds a run of another config" in capsys.readouterr().err
    other = write_jsonl(tmp_path / "other.jsonl", [json.loads(r) for r in good_manifest.read_text().splitlines()][:3])
    assert annotate(other, out) == 2
    assert "holds a run of another manifest" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- 3. poison rows and raising stages ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_row_that_kills_its_worker_every_time_is_rejected_and_the_rest_goes_on(ray_session, clips, reference_run,
                                                                                  tmp_path):
    root, rows = clips
    manifest = write_jsonl(root / "four.jsonl", rows[:4])
    out = tmp_path / "run"
    poison, raising = rows[1]["video_id"], rows[2]["video_id"]
    faults = f'fault_injection=["track:{poison}:exit","segment:{raising}:raise"]'
    assert annotate(manifest, out, faults) == 0
    rejects = rejects_of(out)
    assert [(r["row"], r["video_id"], r["stage"]) for r in rejects] == [(1, poison, "track"), (2, raising, "segment")]
    assert rejects[0]["error"].startswith("poison row: the worker process died 2 times with this row in flight")
    assert "running stage track on it alone" in rejects[0]["error"]
    assert rejects[1]["error"] == "RuntimeError: injected fault in stage segment (row 2)"
    # The other rows of the same batches are samples, identical to those of a run without faults.
    ref = {k: m for tar in sorted((reference_run / "shards").glob("*.tar")) for k, m in iter_members(tar)}
    got = {k: m for tar in sorted((out / "shards").glob("*.tar")) for k, m in iter_members(tar)}
    assert sorted(got) == sorted(sanitize_key(rows[i]["video_id"]) for i in (0, 3))
    for key, members in got.items():
        assert members == ref[key]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["written"], stats["rejected"], stats["rejected_by_stage"]) == (2, 2, {"segment": 1, "track": 1})
    assert hidden_leftovers(out) == []


def test_a_death_with_batch_mates_makes_suspects_and_only_a_death_alone_convicts(good_manifest, tmp_path):
    """The attempt ledger, driven by hand (deaths written as the marks a dying worker leaves), no Ray."""
    from pipelines.annotate import AnnotateJobConfig, AttemptLedger, ClipChain
    from pipelines.config import load_config
    from pipelines.manifest import iter_manifest

    cfg = load_config(AnnotateJobConfig, CONFIG, [*FAST, "max_attempts=1"])
    records = [r.to_record() for r in iter_manifest(str(good_manifest))][:2]
    batch = {k: np.array([r[k] for r in records], dtype=object) for k in records[0]}
    ledger_dir = tmp_path / "attempts"
    group = ClipChain(cfg, str(ledger_dir), "hash")
    ledger = AttemptLedger(str(ledger_dir))

    def died(rows, stage):  # a worker that died leaves its mark behind
        ledger.at(ledger.start(rows), rows, stage)

    died([0, 1], "segment")  # both in flight: neither is proven guilty, even with max_attempts=1
    out = group(batch)
    assert out["ok"].tolist() == [True, True] and all(len(j) for j in out["m_json"])
    assert len(list(ledger_dir.rglob("*.json"))) == 1  # the dead worker's mark stays; the live runs cleared theirs
    died([1], "track")  # then row 1 killed its worker while running alone
    out = group(batch)
    assert out["ok"].tolist() == [True, False]
    assert out["stage"].tolist() == ["", "track"]
    assert out["error"][1].startswith("poison row: the worker process died 2 times with this row in flight, 1 of them "
                                      "running stage track on it alone")


def test_a_batch_wide_failure_is_retried_item_by_item(good_manifest, tmp_path):
    """A stage that raises for a whole batch costs only the item that also fails alone."""
    from pipelines.annotate import AnnotateJobConfig, ClipChain
    from pipelines.config import load_config
    from pipelines.manifest import iter_manifest

    records = [r.to_record() for r in iter_manifest(str(good_manifest))][:3]
    cfg = load_config(AnnotateJobConfig, CONFIG, [*FAST, f'fault_injection=["points:{records[1]["video_id"]}:raise"]'])
    batch = {k: np.array([r[k] for r in records], dtype=object) for k in records[0]}
    group = ClipChain(cfg, str(tmp_path / "attempts"), "hash")
    out = group(batch)
    assert out["ok"].tolist() == [True, False, True]
    assert (out["stage"][1], out["error"][1]) == ("points", "RuntimeError: injected fault in stage points (row 1)")
    assert [bool(len(j)) for j in out["m_json"]] == [True, False, True]


def test_a_truncated_video2dataset_tar_gives_its_readable_rows_and_one_reject(clips, tmp_path):
    from pipelines.manifest import iter_manifest

    root, rows = clips
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        for j, row in enumerate(rows[:3]):
            for suffix, data in (("mp4", (root / row["video"]).read_bytes()), ("txt", row["caption"].encode())):
                info = tarfile.TarInfo(f"{j:04d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.8)])  # inside the third video
    got = list(iter_manifest(str(cut)))
    assert [(r.video_id, r.error) for r in got[:2]] == [("0000", None), ("0001", None)]
    assert len(got) == 3 and got[2].error.startswith("cut.tar: unreadable after sample 0002")


# --- 4. determinism -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_of_the_same_config_give_byte_identical_shards(ray_session, good_manifest, reference_run, tmp_path):
    out = tmp_path / "run"
    assert annotate(good_manifest, out) == 0
    tars = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert tars == ["pite-000000.tar", "pite-000001.tar", "pite-000002.tar"]
    assert tars == sorted(p.name for p in (reference_run / "shards").glob("*.tar"))
    for name in tars:
        assert (out / "shards" / name).read_bytes() == (reference_run / "shards" / name).read_bytes(), name
        index = name.replace(".tar", ".parquet")
        assert pq.read_table(out / "index" / index).equals(pq.read_table(reference_run / "index" / index))
        assert pq.read_table(out / "rejects" / index).equals(pq.read_table(reference_run / "rejects" / index))
    quality = pq.read_table(out / "index" / "pite-000000.parquet").column("delta_avg").to_pylist()
    assert all(q is not None and 0 < q <= 1 for q in quality)  # real figures were compared, not empty columns


@pytest.mark.slow
def test_the_job_writes_the_sample_that_annotate_clip_writes(reference_run, clips):
    """Same stages, same per-row seed, same provenance hash: the Ray job and the one-clip command agree."""
    from pipelines.annotate import AnnotateJobConfig
    from pipelines.annotate_clip import annotate_one
    from pipelines.config import load_config

    root, rows = clips
    row = rows[5]
    cfg = load_config(AnnotateJobConfig, CONFIG, FAST)
    sample, item = annotate_one(cfg, str(root / row["video"]), row["caption"], row["boxes"], row["video_id"])
    assert sample is not None, item.error
    mine = sample.to_members()
    theirs = dict(iter_members(shard_paths(reference_run, 1)["tar"]))[sample.key]
    for suffix in ("traj.npy", "vis.npy", "feat.npy"):
        assert mine[suffix] == theirs[suffix], suffix
    job_meta = json.loads(theirs["json"])
    assert job_meta.pop("events") == row["events"]  # the one-clip command takes no events
    assert json.loads(mine["json"]) == job_meta


# --- 5. readers ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_outputs_open_with_webdataset_ray_data_and_pyarrow(ray_session, reference_run):
    import ray
    import webdataset as wds

    urls = [str(p) for p in sorted((reference_run / "shards").glob("pite-*.tar"))]
    index = pads.dataset(str(reference_run / "index")).to_table()
    keys = index.column("key").to_pylist()
    assert index.num_rows == N_GOOD and keys == tar_keys(reference_run)

    seen = []
    for s in wds.WebDataset(urls, shardshuffle=False).decode():
        meta = s["json"]
        assert isinstance(meta, dict) and sanitize_key(meta["video_id"]) == s["__key__"]
        n = len(meta["objects"])
        assert n >= 1
        assert s["traj.npy"].dtype == np.float16 and s["traj.npy"].shape == (n, K, T, 2)
        assert s["vis.npy"].dtype == np.bool_ and s["vis.npy"].shape == (n, K, T)
        assert s["feat.npy"].dtype == np.float16 and s["feat.npy"].shape == (T, 768)
        assert len(meta["frame_indices"]) == T
        seen.append(s["__key__"])
    assert seen == keys

    rows = ray.data.read_webdataset(urls).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(keys)
    first = next(r for r in rows if r["__key__"] == keys[0])
    assert np.asarray(first["feat.npy"]).shape == (T, 768)
    assert first["json"]["video_id"] == index.column("video_id")[0].as_py()


class Echo:
    """A stand-in chain for the pool: each call returns its rows."""

    def run(self, batch: dict) -> dict:
        return {"row": list(batch["row"])}

    def ready(self) -> bool:
        return True


def test_the_pool_reads_the_input_only_as_far_as_its_calls_in_flight(ray_session):
    """Explicit backpressure: batches are pulled as calls finish, never more than workers x depth ahead of the
    results the driver has taken, whatever the length of the input."""
    from pipelines.annotate import ChainPool

    pulled = []

    def batches():
        for i in range(40):
            pulled.append(i)
            yield {"row": [i]}

    pool = ChainPool(Echo, (), workers=2, num_cpus=0.5, num_gpus=0, memory_bytes=None, depth=2)
    taken, ahead = [], []
    try:
        for result in pool.map(batches(), lambda exc: None):
            taken += result["row"]
            ahead.append(len(pulled) - len(taken))
    finally:
        pool.close()
    assert sorted(taken) == list(range(40))
    assert max(ahead) <= 2 * 2, ahead


# --- 6. video2dataset shards as input --------------------------------------------------------------------------


@pytest.mark.slow
def test_video2dataset_tars_annotate_without_conversion(ray_session, clips, tmp_path):
    root, rows = clips
    shards = tmp_path / "v2d"
    shards.mkdir()
    keys = []
    for t, chunk in enumerate((rows[:3], rows[3:5])):
        with tarfile.open(shards / f"{t:05d}.tar", "w") as tar:
            for j, row in enumerate(chunk):
                key = f"{t:05d}{j:04d}"
                keys.append(key)
                meta = {"url": f"https://example.com/{key}.mp4", "boxes": row["boxes"], "gt": str(root / row["gt"])}
                for suffix, data in (("mp4", (root / row["video"]).read_bytes()), ("txt", row["caption"].encode()),
                                     ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "run"
    assert annotate(str(shards) + "/{00000..00001}.tar", out) == 0
    assert tar_keys(out) == keys  # keyed by the tar keys, in tar order
    index = pads.dataset(str(out / "index")).to_table()
    assert index.column("video_id").to_pylist() == keys
    assert index.column("caption").to_pylist() == [r["caption"] for r in rows[:5]]
    assert all(q is not None and q > 0.5 for q in index.column("box_iou").to_pylist())  # boxes and gt came along
    assert rejects_of(out) == []


# --- 7. CSV and Parquet manifests ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_manifests_give_the_jsonl_samples(ray_session, clips, reference_run, tmp_path, fmt):
    root, rows = clips
    manifest = root / f"manifest-{tmp_path.name}.{fmt}"  # beside videos/ and gt/: the relative paths resolve
    if fmt == "csv":
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    else:
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = tmp_path / "run"
    assert annotate(manifest, out) == 0
    for i in range(3):
        assert shard_paths(out, i)["tar"].read_bytes() == shard_paths(reference_run, i)["tar"].read_bytes()


def test_the_demo_set_is_made_again_when_the_config_asks_for_another(tmp_path):
    """A synth.out made with another n (the demo went from 64 to 256 clips) is remade, not silently reused."""
    from pipelines.annotate import AnnotateJobConfig, maybe_synthesize
    from pipelines.config import load_config

    out = tmp_path / "synth"
    rows = lambda: (out / "manifest.jsonl").read_text().splitlines()  # noqa: E731
    for n in (2, 3, 3):
        cfg = load_config(AnnotateJobConfig, CONFIG, ['input=""', f"synth.n={n}", f"synth.out={out}",
                                                      "synth.workers=1"])
        maybe_synthesize(cfg)
        assert cfg.input == str(out / "manifest.jsonl") and len(rows()) == n
    first = (out / json.loads(rows()[0])["video"]).stat().st_mtime_ns
    maybe_synthesize(load_config(AnnotateJobConfig, CONFIG, ['input=""', "synth.n=3", f"synth.out={out}"]))
    assert (out / json.loads(rows()[0])["video"]).stat().st_mtime_ns == first  # the same n: kept as it is


def report_tiles(out: Path) -> list[tuple[int, int]]:
    """(width, height) of each picture in OUT/report.html."""
    import base64
    import re

    from PIL import Image

    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', (out / "report.html").read_text())
    return [Image.open(io.BytesIO(base64.b64decode(p))).size for p in pngs]


def assert_readable_report(out: Path, n: int) -> None:
    from pipelines.annotate.outputs import MAX_TILE, MIN_TILE

    stats = json.loads((out / "stats.json").read_text())
    assert stats["notes"] == []  # no preview (nor quality figure) failed quietly
    sizes = report_tiles(out)
    assert len(sizes) == n
    for width, _ in sizes:  # three tiles and two 2-px gaps
        assert MIN_TILE <= (width - 4) / 3 <= MAX_TILE, sizes


def test_the_report_draws_every_sample_at_a_readable_size(reference_run):
    assert_readable_report(reference_run, 2)  # report_samples=2 of FAST; 128-px clips, enlarged by a whole factor


@pytest.mark.samples
@pytest.mark.slow
def test_the_report_draws_real_footage_at_a_readable_size(ray_session, tmp_path):
    """../shared/samples: 1296x720 and 854x480 clips, whose grounding frames are larger than their samples."""
    samples = Path(os.environ.get("PITE_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples"))
    if not (samples / "manifest.jsonl").is_file():
        pytest.skip(f"no sample footage at {samples}")
    out = tmp_path / "run"
    assert annotate(samples / "manifest.jsonl", out, "report_samples=12") == 0
    assert_readable_report(out, 5)
