"""The input pass before Ray (pipelines/annotate/split.py): streaming, resumable, duplicates in bounded memory,
video2dataset's parquet read instead of its tars, existence checked on a sample, progress while it runs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.annotate.split as split
from pipelines.annotate import AnnotateJobConfig, open_run_dir, prepare_input
from pipelines.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "annotate" / "demo.yaml"


def config(manifest, out, *extra) -> AnnotateJobConfig:
    return load_config(AnnotateJobConfig, CONFIG, [f"input={manifest}", f"out={out}", "synth.n=0",
                                                   "rows_per_shard=16", *extra])


def manifest(folder: Path, n: int, dup_every: int = 0, missing_from: int | None = None) -> Path:
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    (folder / "videos" / "a.mp4").write_bytes(b"x")
    lines = []
    for i in range(n):
        vid = f"v{i // 2}" if dup_every and i % dup_every == 1 else f"v{i}"
        video = "videos/a.mp4" if missing_from is None or i < missing_from else f"videos/gone-{i}.mp4"
        lines.append(json.dumps({"video_id": vid, "video": video, "caption": "A red ball rolls."}))
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def input_rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "input").glob("pite-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_a_split_cut_off_continues_where_it_was_and_gives_the_same_files(tmp_path, monkeypatch, capsys):
    m = manifest(tmp_path / "m", 200, dup_every=7)
    whole = tmp_path / "whole"
    prepare_input(config(m, whole), open_run_dir(whole))
    cut = tmp_path / "cut"
    monkeypatch.setattr(split, "SAVE_S", 0.0)  # record the place after every shard's file
    calls = {"n": 0}

    def stop_midway(self, rows, file_index):
        calls["n"] += 1
        if calls["n"] == 120:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(split.Progress, "tick", stop_midway)
        with pytest.raises(KeyboardInterrupt):
            prepare_input(config(m, cut), open_run_dir(cut))
    assert not (cut / "run.json").exists() and (cut / "input" / split.STATE).is_file()
    capsys.readouterr()
    prepare_input(config(m, cut), open_run_dir(cut))
    assert "annotate: split continues at row 112" in capsys.readouterr().out  # 7 whole shards of 16
    assert input_rows(cut) == input_rows(whole)
    assert json.loads((cut / "run.json").read_text()) == json.loads((whole / "run.json").read_text())
    assert not (cut / "input" / split.STATE).exists() and not (cut / "input" / split.IDS).exists()


def test_duplicates_are_found_from_the_hashes_and_named_on_the_later_row(tmp_path, capsys):
    m = manifest(tmp_path / "m", 40, dup_every=5)  # rows 1, 6, 11, ... repeat an earlier row's id
    out = tmp_path / "out"
    prepare_input(config(m, out), open_run_dir(out))
    rows = input_rows(out)
    dups = {r["row"]: r["error"] for r in rows if r["error"]}
    expected = {}
    first: dict[str, int] = {}
    for r in rows:
        if r["video_id"] in first:
            expected[r["row"]] = f"duplicate video_id {r['video_id']!r} (first at row {first[r['video_id']]})"
        else:
            first[r["video_id"]] = r["row"]
    assert dups == expected and len(dups) == 8
    assert f"8 x duplicate video_id" in capsys.readouterr().out


def test_existence_is_checked_on_a_sample_and_a_manifest_of_missing_videos_is_refused(tmp_path, capsys,
                                                                                       monkeypatch):
    from annotate.errors import ConfigError

    monkeypatch.setattr(split, "FIRST_CHECKED", 20)
    monkeypatch.setattr(split, "RANDOM_CHECKED", 20)
    m = manifest(tmp_path / "some", 300, missing_from=250)  # 50 of 300 missing: the sample sees a few
    out = tmp_path / "some-out"
    prepare_input(config(m, out), open_run_dir(out))
    line = capsys.readouterr().out
    assert "annotate: input 300 rows" in line
    assert "of the 40 checked not found" in line or "not found" not in line
    gone = manifest(tmp_path / "gone", 300, missing_from=0)
    with pytest.raises(ConfigError, match="none of the 300 rows"):
        prepare_input(config(gone, tmp_path / "gone-out"), open_run_dir(tmp_path / "gone-out"))


def test_progress_lines_while_the_split_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(split, "PROGRESS_S", 0.0)
    m = manifest(tmp_path / "m", 40)
    prepare_input(config(m, tmp_path / "out"), open_run_dir(tmp_path / "out"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("annotate: split ")]
    assert lines and "rows/s), file 1 of 1" in lines[-1]


def test_video2dataset_parquet_is_read_instead_of_the_tar(tmp_path):
    """The sidecar lists what the tar holds (status success); the tar's headers are not walked."""
    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for key in ("000000000", "000000001"):
            for ext, data in (("mp4", b"x"), ("txt", b"from the tar"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.Table.from_pylist([
        {"key": "000000000", "caption": "A dog runs.", "status": "success", "start": 1.5},
        {"key": "000000002", "caption": "Failed.", "status": "failed_to_download", "start": None},
        {"key": "000000001", "caption": "A cat sits.", "status": "success", "start": None},
    ]), tmp_path / "00000.parquet")
    out = tmp_path / "out"
    prepare_input(config(str(tmp_path / "{00000..00000}.tar"), out), open_run_dir(out))
    rows = input_rows(out)
    assert [(r["video_id"], r["caption"], r["tar_member"], r["start"]) for r in rows] == [
        ("000000000", "A dog runs.", "000000000.mp4", 1.5), ("000000001", "A cat sits.", "000000001.mp4", None)]
    assert all(r["video"] == str(tar_path.resolve()) and r["error"] is None for r in rows)
