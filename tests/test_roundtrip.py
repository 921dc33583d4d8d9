"""Issue 2's round trip: `pite synth` clips -> annotated samples -> ShardWriter -> `pite inspect --validate` and
the readers give back every field exactly (json meta, array dtypes/shapes/bytes, index rows, rejects)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from annotate.assemble import assemble
from annotate.config import AnnotateConfig
from annotate.pipeline import ClipAnnotator, make_item
from annotate.quality import clip_quality
from annotate.schema import Sample, build_sample
from pipelines.annotate import QUALITY_COLUMNS
from pipelines.cli import main as pite
from pipelines.shards import ShardWriter, iter_members, iter_samples, open_index, open_rejects, shard_paths

T, K = 100, 3
SYNTH = ["--width", "128", "--height", "128", "--frames", "30", "--set", "min_size=0.3", "--set", "max_size=0.4"]


def placeholder(video_id: str) -> Sample:
    """A sample with no object (converted instruction data may have none) and every optional field set."""
    caption = "Ünïcode, \"quotes\" and a\nnewline — 中文."
    rng = np.random.default_rng(3)
    return build_sample(
        video_id=video_id, caption=caption, width=640, height=360, fps=29.97, duration=12.345,
        frame_indices=np.round(np.linspace(0, 369, T)).astype(int), frame_times=np.linspace(0, 12.312, T),
        objects=[], traj=None, vis=None, feat=rng.normal(size=(T, 768)),
        dropped=[{"phrase": "the wind", "char_span": [0, 0], "reason": "no box above threshold (best 0.12)"}],
        unmatched=[{"phrase": "a kite", "frame": 3, "box": [0.5, 1, 2, 3.25], "reason": "no noun phrase"}],
        provenance={"backends": {"ground": "given"}, "config_hash": "0123abcd", "nested": {"list": [1, 2.5, None]}},
        events=[{"start": 0.0, "end": 1.5, "text": "the ball rolls"}],
        conversations=[{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "From 00 to 12."}],
        num_points=K,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three `pite synth` clips annotated in process, written as two shards with a placeholder and a reject."""
    root = tmp_path_factory.mktemp("roundtrip")
    synth = root / "synth"
    assert pite(["synth", "--n", "3", "--seed", "5", "--out", str(synth), *SYNTH]) == 0
    rows = [json.loads(line) for line in (synth / "manifest.jsonl").read_text().splitlines()]
    cfg = AnnotateConfig()
    items = [make_item(i, r["video_id"], str(synth / r["video"]), r["caption"], cfg.seed, events=r["events"],
                       boxes=r["boxes"], gt=str(synth / r["gt"])) for i, r in enumerate(rows)]
    ClipAnnotator(cfg).setup().annotate(items)
    assert all(it.ok for it in items), [it.error for it in items]
    samples = [assemble(it, cfg, "hash-of-config") for it in items]
    quality = [clip_quality(it, cfg) for it in items]
    samples.append(placeholder("clip/ü 1.mp4"))  # a key that needs sanitising
    quality.append({})
    out = root / "run"
    with ShardWriter(out, 0, quality_columns=QUALITY_COLUMNS, num_frames=T, num_points=K) as w:
        for s, q in zip(samples[:2], quality[:2]):
            w.add(s, q)
    with ShardWriter(out, 1, quality_columns=QUALITY_COLUMNS, num_frames=T, num_points=K) as w:
        for s, q in zip(samples[2:], quality[2:]):
            w.add(s, q)
        w.reject("synth-999999", 7, "decode", "videos/synth-999999.mp4: file not found")
    return {"out": out, "samples": samples, "quality": quality, "items": items}


def test_inspect_validate_reads_every_sample_back(run, capsys):
    rc = pite(["inspect", str(run["out"]), "--validate", "--json", "--frames", str(T), "--points", str(K)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0, summary
    assert summary["validate"] == {"samples_read": 4, "bad": 0, "problems": []}
    assert (summary["samples"], summary["shards"], summary["rejects"]["total"]) == (4, 2, 1)
    n_objects = [len(s.meta["objects"]) for s in run["samples"]]
    assert summary["objects_per_sample"]["max"] == max(n_objects) and summary["objects_per_sample"]["min"] == 0
    assert summary["quality"]["delta_avg"]["n"] == 3  # the placeholder has no ground truth: null, not 0


def test_every_field_round_trips(run):
    written = {s.key: s for s in run["samples"]}
    read = {s.key: s for i in (0, 1) for s in iter_samples(shard_paths(run["out"], i)["tar"])}
    assert list(read) == list(written)  # same keys, same order
    for key, s in written.items():
        back = read[key]
        assert back.meta == s.meta, key
        assert json.dumps(back.meta, sort_keys=True) == json.dumps(s.meta, sort_keys=True)  # types too (1 vs 1.0)
        for name in ("traj", "vis", "feat"):
            a, b = getattr(s, name), getattr(back, name)
            assert (a.dtype, a.shape) == (b.dtype, b.shape), (key, name)
            assert a.tobytes() == b.tobytes(), (key, name)  # bit for bit, NaN-safe
    # The annotated samples carry real content (not empty shells), and the placeholder its optional fields.
    real = run["samples"][0]
    assert real.traj.shape[0] >= 2 and real.vis.any() and np.abs(real.feat).sum() > 0
    assert read[run["samples"][3].key].meta["conversations"][1]["value"] == "From 00 to 12."


def test_members_are_stored_byte_for_byte(run):
    stored = {k: m for i in (0, 1) for k, m in iter_members(shard_paths(run["out"], i)["tar"])}
    for s in run["samples"]:
        assert stored[s.key] == s.to_members()


def test_index_and_rejects_round_trip(run):
    rows = {r["key"]: r for r in open_index(run["out"]).to_table().to_pylist()}
    assert ds.dataset(str(run["out"] / "index")).count_rows() == 4  # the design's catalogue, read as pyarrow does
    for i, (s, q) in enumerate(zip(run["samples"], run["quality"])):
        r = rows[s.key]
        m = s.meta
        assert (r["video_id"], r["caption"], r["n_objects"], r["n_frames"], r["width"], r["height"], r["duration"]) \
            == (m["video_id"], m["caption"], len(m["objects"]), len(m["frame_indices"]), m["width"], m["height"],
                m["duration"])
        assert r["shard"] == ("pite-000000.tar" if i < 2 else "pite-000001.tar")
        for col in QUALITY_COLUMNS:
            expected = q.get(col)
            expected = None if expected is None or not np.isfinite(expected) else expected
            assert r[col] == expected, (s.key, col)
    assert open_rejects(run["out"]).to_table().to_pylist() == [
        {"video_id": "synth-999999", "row": 7, "stage": "decode", "error": "videos/synth-999999.mp4: file not found"}]


def test_a_changed_member_is_caught_by_validate(run, tmp_path, capsys):
    """The round trip check can fail: a sample whose vis no longer matches its traj is reported, exit 1."""
    out = tmp_path / "run"
    bad = run["samples"][0]
    bad = type(bad)(meta=bad.meta, traj=bad.traj, vis=bad.vis[:, :, :-1], feat=bad.feat)
    with ShardWriter(out, 0, quality_columns=QUALITY_COLUMNS, validate=False) as w:
        w.add(bad)
    rc = pite(["inspect", str(out), "--validate"])
    text = capsys.readouterr().out
    assert rc == 1 and f"sample '{bad.key}': vis: shape" in text, text
