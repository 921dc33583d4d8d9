"""A user's second try: a missing package or weights file is caught before Ray in one go and the corrected command
runs into the same out=; a given box that matches no phrase is named; every small mistake says how to fix it."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from annotate.synthetic import WorldParams, make_clip
from pipelines.annotate import AnnotateJobConfig, main as annotate_main
from pipelines.annotate import open_run_dir, prepare_input
from pipelines.annotate_clip import main as annotate_clip_main
from pipelines.config import load_config
from pipelines.infer import main as infer_main
from pipelines.synth import write_clip

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
FAST = ["synth.n=0", "num_frames=16", "progress=false", "rows_per_shard=2", "batch_size=2", "report_samples=1"]
PARAMS = WorldParams(width=128, height=128, frames=30)


def annotate(manifest, out, *extra) -> int:
    return annotate_main(["--config", str(CONFIG), f"input={manifest}", f"out={out}", *FAST, *extra])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Three good clips and one whose given box names a phrase the caption does not have."""
    root = tmp_path_factory.mktemp("clips")
    rows = [write_clip(make_clip(3, i, PARAMS), root, PARAMS) for i in range(4)]
    rows[3] = {**rows[3], "caption": "A kitten sleeps on the couch.",
               "boxes": [{"phrase": "a fluffy cat", "frame": 0, "box": [10, 10, 60, 60]}]}
    return write_jsonl(root / "manifest.jsonl", rows)


MISSING = ["ground.backend=groundingdino", "ground.weights=/nonexistent/grounding-dino-tiny",
           "segment.backend=sam", "segment.weights=/nonexistent/sam_vit_b.pth",
           "track.backend=cotracker", "track.weights=/nonexistent/scaled_offline.pth",
           "features.backend=clip", "features.weights=/nonexistent/clip-vit-large-patch14"]


@pytest.mark.slow
def test_missing_packages_and_weights_are_listed_at_once_then_the_corrected_command_runs(
        manifest, tmp_path, monkeypatch, capsys):
    import ray

    out = tmp_path / "run"
    with monkeypatch.context() as mp:  # as if neither package were installed
        mp.setitem(sys.modules, "cotracker.predictor", None)
        mp.setitem(sys.modules, "segment_anything", None)
        # the README's production-recipe command where only CoTracker3 is missing: one line
        assert annotate(manifest, out, "track.backend=cotracker", f"track.weights={manifest}") == 2
        one = capsys.readouterr().err.strip().splitlines()
        assert len(one) == 1 and one[0].startswith("pite annotate: track.backend=cotracker needs the `cotracker` "
                                                   "package (not installed): `make cotracker COTRACKER_SRC=DIR`"), one
        t0 = time.perf_counter()
        assert annotate(manifest, out, *MISSING) == 2
        seconds = time.perf_counter() - t0
    got = capsys.readouterr()
    lines = got.err.strip().splitlines()
    assert all(ln.startswith("pite annotate: ") for ln in lines) and "Traceback" not in got.err
    keys = [ln.split(": ")[1].split(" ")[0] for ln in lines]
    assert keys == ["ground.weights", "segment.backend=sam", "segment.weights", "track.backend=cotracker",
                    "track.weights", "features.weights"], lines
    assert "make cotracker" in got.err and "pip install segment-anything" in got.err
    assert not out.exists() and not ray.is_initialized() and seconds < 30

    # An earlier attempt of another config that finished no shard (it died at its first actor) blocks nothing.
    cfg = load_config(AnnotateJobConfig, CONFIG, [f"input={manifest}", f"out={out}", *FAST, "num_points=5"])
    prepare_input(cfg, open_run_dir(out))
    assert (out / "run.json").is_file()
    assert annotate(manifest, out) == 0
    got = capsys.readouterr().out
    assert "annotate: 3 samples, 1 rejects" in got
    assert ("rejects: 1 x ground: no phrase grounded: given phrase '…' is in no noun phrase of the caption; first: "
            "synth-000003: no phrase grounded: given phrase 'a fluffy cat' is in no noun phrase of the caption "
            "(the caption's noun phrases: 'A kitten', 'the couch'") in got
    assert "a fluffy cat" in (out / "report.html").read_text()
    assert annotate(manifest, out) == 0
    assert "annotate: resumed: 2 shard(s) kept (4 rows), 0 to do" in capsys.readouterr().out


def test_every_misnamed_column_is_named_in_one_run(tmp_path, capsys):
    rows = [{"id": "a", "path": "a.mp4", "text": "A cat.", "caption": None}]
    assert annotate(write_jsonl(tmp_path / "m.jsonl", rows), tmp_path / "out") == 2
    got = capsys.readouterr()
    assert ("1 x missing required columns 'video_id', 'video', 'caption' (the row has 'id', 'path', 'text'; "
            "required: video_id, video, caption)") in got.out
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_mistyped_input_is_not_found_at_once_without_making_the_demo_set(tmp_path, capsys):
    synth = tmp_path / "synth"
    t0 = time.perf_counter()
    rc = annotate_main(["--config", str(CONFIG), f"input={tmp_path / 'mistyped.jsonl'}", f"out={tmp_path / 'o'}",
                        f"synth.out={synth}"])
    assert rc == 2 and time.perf_counter() - t0 < 20
    assert f"input: {tmp_path / 'mistyped.jsonl'} not found" in capsys.readouterr().err
    assert not synth.exists()


@pytest.mark.parametrize("command, argv, fix", [
    (annotate_main, ["--config", str(CONFIG), "--input", "my.jsonl", "--out", "runs/x"],
     "write input=my.jsonl out=runs/x"),
    (annotate_clip_main, ["--video", "v.mp4", "--caption", "A cat.", "--out", "o", "--seed", "3"], "write seed=3"),
])
def test_flags_that_are_settings_get_their_key_value_form(command, argv, fix, capsys):
    with pytest.raises(SystemExit) as stop:
        command(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and fix in err, err


def test_annotate_clip_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    rc = annotate_clip_main(["--video", "v.mp4", "--caption", "A cat.", "--out", str(tmp_path / "taken"),
                             "--boxes", "[]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"pite annotate-clip: --out: {tmp_path / 'taken'} is a file; give a folder for the " \
                              "sample's files"


def test_infer_on_a_missing_checkpoint_says_what_makes_one(tmp_path, capsys):
    rc = infer_main(["--checkpoint", str(tmp_path / "final"), "--video", "v.mp4", "--query", "What happens?"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "`make train` makes the demo's" in err


def test_the_readme_manifest_example_reads_as_a_manifest(tmp_path):
    from pipelines.manifest import iter_manifest

    readme = (REPO / "README.md").read_text()
    block = readme.split("```jsonl\n", 1)[1].split("```", 1)[0]
    (tmp_path / "manifest.jsonl").write_text(block)
    rows = list(iter_manifest(str(tmp_path / "manifest.jsonl")))
    assert [r.error for r in rows] == [None, None, None]
    assert [len(r.boxes or []) for r in rows] == [1, 2, 0] and rows[2].start == 2.0
    assert all(r.video.startswith(str(tmp_path / "videos")) for r in rows)  # relative to the manifest's folder
