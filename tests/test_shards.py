"""pipelines.shards (writer, atomic commit, resume helpers, readers) and `pite inspect` on a small hand-made run."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from annotate.errors import SchemaError
from annotate.schema import sanitize_key
from pipelines import inspect as inspect_cmd
from pipelines.cli import main as cli_main
from pipelines.shards import (
    INDEX_SCHEMA,
    QUALITY_COLUMNS,
    REJECTS_SCHEMA,
    ShardWriter,
    iter_members,
    iter_samples,
    list_done_shards,
    list_partial_shards,
    open_index,
    open_rejects,
    remove_partial,
    shard_done,
    shard_paths,
)
from tests.test_schema import make_sample


def visible_files(run: Path) -> list[str]:
    """Every file of the run a reader could pick up (final names only)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("pite-*") if p.is_file())


def all_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def write_shard(run, i, samples, rejects=(), quality=None, **kw):
    with ShardWriter(run, i, **kw) as w:
        for j, s in enumerate(samples):
            w.add(s, quality[j] if quality else None)
        for r in rejects:
            w.reject(*r)
    return shard_paths(run, i)


def three_samples(offset=0):
    return [make_sample(video_id=f"clip.{offset + j}", n=1 + j, seed=offset + j) for j in range(3)]


# --- writer -----------------------------------------------------------------------------------------------------


def test_same_samples_give_identical_bytes(tmp_path):
    a = write_shard(tmp_path / "a", 3, three_samples(), [("bad/1", 1, "decode", "no frames")])
    b = write_shard(tmp_path / "b", 3, three_samples(), [("bad/1", 1, "decode", "no frames")])
    for kind in ("tar", "index", "rejects"):
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind
    assert a["tar"] == tmp_path / "a" / "shards" / "pite-000003.tar"
    assert a["index"] == tmp_path / "a" / "index" / "pite-000003.parquet"


def test_tar_headers_are_fixed_and_members_in_order(tmp_path):
    paths = write_shard(tmp_path, 0, three_samples())
    with tarfile.open(paths["tar"]) as tf:
        infos = tf.getmembers()
    key = sanitize_key("clip.0")
    assert [i.name for i in infos[:4]] == [f"{key}.json", f"{key}.traj.npy", f"{key}.vis.npy", f"{key}.feat.npy"]
    assert len(infos) == 12
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
        assert info.isreg()


def test_shard_reads_back_as_the_samples_written(tmp_path):
    samples = three_samples()
    paths = write_shard(tmp_path, 0, samples)
    back = list(iter_samples(paths["tar"]))
    assert [s.key for s in back] == [s.key for s in samples]
    for s, b in zip(samples, back):
        assert b.to_members() == s.to_members()


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    samples = three_samples()
    paths = write_shard(tmp_path, 0, samples)
    got = list(wds.WebDataset(str(paths["tar"]), shardshuffle=False))
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    assert got[1]["traj.npy"] == samples[1].to_members()["traj.npy"]
    assert json.loads(got[2]["json"])["video_id"] == "clip.2"


def test_index_and_rejects_are_a_pyarrow_dataset_with_fixed_columns(tmp_path):
    # shard 0 has quality figures, shard 1 none, shard 2 only rejects: plain pyarrow still sees every column
    write_shard(tmp_path, 0, three_samples(0), [("x", 1, "decode", "no frames")],
                quality=[{"delta_avg": 0.5, "aj": np.float32(0.25)}, {"delta_avg": float("nan")}, {}])
    write_shard(tmp_path, 1, three_samples(10), [("y", 12, "ground", "no object")])
    write_shard(tmp_path, 2, [], [("z", 20, "decode", "unreadable"), ("w", 21, "decode", "unreadable")])
    index = ds.dataset(tmp_path / "index").to_table()
    assert index.column_names == INDEX_SCHEMA.names + list(QUALITY_COLUMNS)
    assert index.num_rows == 6
    rows = sorted(index.to_pylist(), key=lambda r: r["video_id"])
    assert [r["video_id"] for r in rows] == ["clip.0", "clip.1", "clip.10", "clip.11", "clip.12", "clip.2"]
    assert rows[0]["key"] == sanitize_key("clip.0")
    assert (rows[0]["n_objects"], rows[0]["n_frames"], rows[0]["width"], rows[0]["height"]) == (1, 5, 64, 48)
    assert rows[0]["shard"] == "pite-000000.tar" and rows[2]["shard"] == "pite-000001.tar"
    assert rows[0]["caption"].endswith("café.") and rows[0]["duration"] == 2.0
    assert (rows[0]["delta_avg"], rows[0]["aj"], rows[0]["oa"]) == (0.5, 0.25, None)
    assert rows[1]["delta_avg"] is None  # NaN (undefined) is stored as null
    assert rows[2]["delta_avg"] is None
    rejects = ds.dataset(tmp_path / "rejects").to_table()
    assert rejects.schema.equals(REJECTS_SCHEMA)
    assert sorted(rejects["row"].to_pylist()) == [1, 12, 20, 21]
    empty = pq.read_table(shard_paths(tmp_path, 2)["index"])
    assert empty.num_rows == 0 and empty.column_names == index.column_names
    assert open_index(tmp_path).count_rows() == 6 and open_rejects(tmp_path).count_rows() == 4


def test_open_index_unifies_shards_with_different_quality_columns(tmp_path):
    write_shard(tmp_path, 0, three_samples(0), quality_columns=())
    write_shard(tmp_path, 1, three_samples(10), quality=[{"mpjpe": 1.0}, {}, {}], quality_columns=("mpjpe",))
    table = open_index(tmp_path).to_table()
    assert "mpjpe" in table.column_names and table.num_rows == 6
    assert sorted(v for v in table["mpjpe"].to_pylist() if v is not None) == [1.0]


def test_open_index_of_an_empty_run_has_the_columns(tmp_path):
    table = open_index(tmp_path).to_table()
    assert table.num_rows == 0 and table.column_names == INDEX_SCHEMA.names


def test_bad_samples_are_refused_and_nothing_of_them_is_written(tmp_path):
    bad = make_sample(video_id="bad")
    bad.meta["objects"][0]["box"] = [0.5, 0.0, 0.2, 1.0]
    with ShardWriter(tmp_path, 0, num_frames=5) as w:
        w.add(make_sample(video_id="a"))
        with pytest.raises(SchemaError, match=r"sample 'bad': objects\[0\]\.box"):
            w.add(bad)
        with pytest.raises(SchemaError, match="key already in shard pite-000000"):
            w.add(make_sample(video_id="a", seed=3))
        with pytest.raises(SchemaError, match=r"quality \['iou'\] not among the declared columns"):
            w.add(make_sample(video_id="b"), {"iou": 0.3})
        with pytest.raises(SchemaError, match="quality delta_avg: expected a number, got 'high'"):
            w.add(make_sample(video_id="b"), {"delta_avg": "high"})
        with pytest.raises(SchemaError, match="config says T=5"):
            w.add(make_sample(video_id="c", t=6))
        w.reject("bad", 1, "write", "box out of order")
    assert [s.key for s in iter_samples(shard_paths(tmp_path, 0)["tar"])] == ["a"]
    assert open_index(tmp_path).count_rows() == 1


def test_writer_refuses_use_after_commit(tmp_path):
    w = ShardWriter(tmp_path, 0)
    w.commit()
    with pytest.raises(RuntimeError, match="committed"):
        w.add(make_sample())


# --- atomicity and resume ---------------------------------------------------------------------------------------


def test_exception_inside_the_writer_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with ShardWriter(tmp_path, 0) as w:
            w.add(make_sample())
            1 / 0
    assert all_files(tmp_path) == []
    assert not shard_done(tmp_path, 0) and list_done_shards(tmp_path) == []


def test_failure_on_the_second_rename_leaves_nothing(tmp_path, monkeypatch):
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk gone"):
        with ShardWriter(tmp_path, 0) as w:
            w.add(make_sample())
    assert len(calls) == 2 and Path(calls[0]).name == "pite-000000.tar"  # the tar was in place before the failure
    assert all_files(tmp_path) == []
    assert not shard_done(tmp_path, 0)


def test_kill_between_renames_is_not_done_and_resume_cleans_it(tmp_path, monkeypatch):
    """A process killed mid-commit runs no cleanup: simulate that, then check what a resume sees."""
    write_shard(tmp_path, 0, three_samples(0))  # a done shard, kept by the resume
    real_replace, calls = os.replace, []

    class Killed(BaseException):
        pass

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    monkeypatch.setattr(ShardWriter, "abort", lambda self: None)  # a dead process cleans nothing
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(Killed):
        with ShardWriter(tmp_path, 1) as w:
            w.add(make_sample(video_id="late"))
    monkeypatch.undo()

    assert (tmp_path / "shards" / "pite-000001.tar").exists()  # renamed before the "kill"
    assert not shard_done(tmp_path, 1)
    assert list_done_shards(tmp_path) == [0] and list_partial_shards(tmp_path) == [1]
    assert ds.dataset(tmp_path / "index").count_rows() == 3  # the index is renamed last: never a half shard in it
    assert open_index(tmp_path).count_rows() == 3
    leftovers = [f for f in all_files(tmp_path) if f not in visible_files(tmp_path)]
    assert len(leftovers) == 2 and all(Path(f).name.startswith(".pite-000001") for f in leftovers)

    removed = remove_partial(tmp_path)
    assert len(removed) == 3
    assert all_files(tmp_path) == visible_files(tmp_path) == [
        "index/pite-000000.parquet", "rejects/pite-000000.parquet", "shards/pite-000000.tar"]
    write_shard(tmp_path, 1, [make_sample(video_id="late")])
    assert list_done_shards(tmp_path) == [0, 1] and open_index(tmp_path).count_rows() == 4


def test_unfinished_writer_is_invisible(tmp_path):
    w = ShardWriter(tmp_path, 4)
    w.add(make_sample())
    assert visible_files(tmp_path) == []
    assert len(all_files(tmp_path)) == 1  # the temporary tar
    assert ds.dataset(tmp_path / "index").count_rows() == 0
    assert not shard_done(tmp_path, 4)
    remove_partial(tmp_path)
    assert all_files(tmp_path) == []
    w.abort()


# --- tar reading errors -----------------------------------------------------------------------------------------


def _raw_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_reader_reports_broken_tars(tmp_path):
    _raw_tar(tmp_path / "split.tar", [("a.json", b"{}"), ("b.json", b"{}"), ("a.vis.npy", b"")])
    with pytest.raises(SchemaError, match="key 'a' appears twice"):
        list(iter_members(tmp_path / "split.tar"))
    _raw_tar(tmp_path / "nodot.tar", [("README", b"hi")])
    with pytest.raises(SchemaError, match="has no '.suffix'"):
        list(iter_members(tmp_path / "nodot.tar"))
    paths = write_shard(tmp_path / "run", 0, three_samples())
    data = paths["tar"].read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(SchemaError, match="cut.tar: unreadable tar"):
        list(iter_members(tmp_path / "cut.tar"))
    renamed = make_sample(video_id="other")
    _raw_tar(tmp_path / "wrongkey.tar", [(f"mine.{k}", v) for k, v in renamed.to_members().items()])
    with pytest.raises(SchemaError, match="video_id 'other' has key 'other'"):
        list(iter_samples(tmp_path / "wrongkey.tar"))


# --- pite inspect -----------------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    write_shard(run, 0, three_samples(0), [("broken.mp4", 3, "decode", "cannot open")],
                quality=[{"delta_avg": 0.5}, {"delta_avg": 0.75}, {}])
    write_shard(run, 1, [make_sample(video_id="solo", n=5, caption=CAPTION_SHORT, seed=9)],
                [("x", 5, "ground", "no object found"), ("y", 6, "ground", "no object found"),
                 ("z", 7, "decode", "cannot open")])
    (run / "stats.json").write_text(json.dumps({"input": 8, "written": 4, "rejected": {"decode": 2, "ground": 2},
                                                "config": {"name": "demo"}}))
    return run


CAPTION_SHORT = "A red ball, a small dog and a café."


def test_inspect_summary_figures(run, capsys):
    assert inspect_cmd.main([str(run), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["samples"], s["shards"], s["incomplete_shards"]) == (4, 2, [])
    assert s["objects_per_sample"] == {"mean": 2.75, "min": 1, "max": 5, "histogram": {"1": 1, "2": 1, "3": 1, "5": 1}}
    n = len(make_sample().meta["caption"])
    assert s["caption_chars"] == {"mean": (3 * n + len(CAPTION_SHORT)) / 4, "min": len(CAPTION_SHORT), "max": n}
    assert s["frames"] == {"mean": 5.0, "min": 5, "max": 5}
    assert s["quality"] == {"delta_avg": {"mean": 0.625, "n": 2}}
    assert s["rejects"]["total"] == 4
    assert s["rejects"]["by_stage"]["decode"] == {"count": 2, "top_reasons": [{"error": "cannot open", "count": 2}]}
    assert s["rejects"]["by_stage"]["ground"]["count"] == 2
    assert s["stats"] == {"input": 8, "written": 4, "rejected.decode": 2, "rejected.ground": 2}


def test_inspect_text_and_validate_clean_run(run, capsys):
    assert cli_main(["inspect", str(run), "--validate", "--frames", "5", "--points", "3"]) == 0
    out = capsys.readouterr().out
    assert "samples: 4  shards: 2" in out
    assert "rejects: 4" in out and "decode: 2" in out and "2 x cannot open" in out
    assert "quality delta_avg: mean 0.6250 over 2 samples" in out
    assert "validate: 4 samples read, 0 problems" in out


def test_validate_reports_each_bad_sample(run, capsys):
    # rewrite shard 0 with a bad dtype in one sample and a wrong index count for another
    samples = three_samples(0)
    samples[1].traj = samples[1].traj.astype(np.float32)
    write_shard(run, 0, samples, validate=False)
    index_path = shard_paths(run, 0)["index"]
    table = pq.read_table(index_path)
    n_objects = table["n_objects"].to_pylist()
    n_objects[2] = 7
    pq.write_table(table.set_column(table.schema.get_field_index("n_objects"), "n_objects",
                                    pa.array(n_objects, pa.int32())), index_path)
    assert inspect_cmd.main([str(run), "--validate"]) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("pite-")]
    assert bad == [
        f"pite-000000.tar: sample '{sanitize_key('clip.1')}': traj: dtype float32, expected float16",
        f"pite-000000.tar: sample '{sanitize_key('clip.2')}': index.n_objects: index says 7, sample has 3",
    ]
    assert "validate: 4 samples read, 2 problems" in out


def test_validate_reports_a_truncated_tar_and_a_config_mismatch(run, capsys):
    tar = shard_paths(run, 1)["tar"]
    tar.write_bytes(tar.read_bytes()[:700])
    assert inspect_cmd.main([str(run), "--validate", "--points", "4"]) == 1
    out = capsys.readouterr().out
    assert "pite-000001.tar: unreadable tar" in out
    assert "pite-000000.tar: sample 'clip_0-" in out and "config says K=4" in out


def test_inspect_bad_run_dir_is_a_one_line_error(tmp_path, capsys):
    assert inspect_cmd.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and err.count("\n") == 1


def test_inspect_shows_incomplete_shards(run, capsys):
    shard_paths(run, 1)["rejects"].unlink()
    assert inspect_cmd.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "samples: 3  shards: 1" in out and "incomplete shards" in out and "[1]" in out
