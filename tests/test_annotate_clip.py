"""`pite annotate-clip`: one clip through every stage without Ray, its sample on disk, and every outcome that is not
a clean object (rejects and drops) reported with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate.schema import MEMBERS, Sample, validate_sample
from annotate.synthetic import WorldParams, make_clip
from pipelines.cli import main as pite
from pipelines.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("PITE_SAMPLES", ROOT.parent / "shared" / "samples"))
# A small clip keeps each run about a second; objects large enough for GrabCut and LK.
PARAMS = WorldParams(width=128, height=128, frames=30, min_size=0.3, max_size=0.4)
EXTRA = " Nearby sit a blue cup, a small lamp and a wooden chair."  # three phrases no synthetic object answers to


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate-clip")
    c = make_clip(21, 0, PARAMS)  # "a purple diamond" and "a striped yellow triangle", both boxed at frame 0
    row = write_clip(c, out, PARAMS)
    assert [b["phrase"] for b in c.boxes] == ["a purple diamond", "a striped yellow triangle"]
    return {"video": str(out / row["video"]), "caption": c.caption, "boxes": c.boxes, "gt": c.gt}


def run(capsys, video, caption, out, boxes=None, *extra):
    argv = ["annotate-clip", "--video", str(video), "--caption", caption, "--out", str(out), *extra]
    if boxes is not None:
        argv += ["--boxes", boxes if isinstance(boxes, str) else json.dumps(boxes)]
    rc = pite(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_sample(out: Path, key: str) -> Sample:
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{key}.{m}" for m in MEMBERS] + ["annotate-clip.json"]), files
    return Sample.from_members({m: (out / f"{key}.{m}").read_bytes() for m in MEMBERS}, key)


def test_writes_one_valid_sample_and_a_summary_line(clip, tmp_path, capsys):
    rc, out, err = run(capsys, clip["video"], clip["caption"], tmp_path / "out", clip["boxes"])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith("synth-000000: 2 objects (a purple diamond, a striped yellow triangle), 0 dropped, "
                               "T=100, visible "), lines[0]
    for stage in ("decode", "nouns", "ground", "segment", "points", "track", "features"):
        assert f"{stage} " in lines[0]

    s = read_sample(tmp_path / "out", "synth-000000")
    validate_sample(s, num_frames=100, num_points=3)
    m = s.meta
    assert (m["video_id"], m["width"], m["height"], m["fps"]) == ("synth-000000", 128, 128, 10.0)
    assert m["duration"] == pytest.approx(3.0)
    assert m["frame_indices"] == np.round(np.linspace(0, 29, 100)).astype(int).tolist()  # 30 frames -> 100 samples
    assert m["dropped"] == [] and m["unmatched"] == []
    assert m["provenance"]["config_hash"] and m["provenance"]["backends"]["ground"] == "given"
    assert s.traj.shape == (2, 3, 100, 2) and s.vis.shape == (2, 3, 100) and s.feat.shape == (100, 768)
    gt = clip["gt"]
    for i, (obj, given) in enumerate(zip(m["objects"], clip["boxes"])):
        assert clip["caption"][slice(*obj["char_span"])] == obj["phrase"] == given["phrase"]
        assert obj["box"] == pytest.approx(np.array(given["box"]) / 128)
        assert (obj["frame"], obj["source_frame"]) == (0, 0)
        # The K points sit on the object itself at its grounding frame, and are visible there.
        pts = s.traj[i, :, obj["frame"]].astype(np.float64) * 128
        assert gt.covers(i, 0, pts).all(), pts
        assert s.vis[i, :, obj["frame"]].all()


@pytest.mark.slow
def test_the_console_command_exits_0(clip, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "annotate-clip", "--video", clip["video"], "--caption",
         clip["caption"], "--boxes", json.dumps(clip["boxes"]), "--out", str(out), "num_points=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("synth-000000: 2 objects"), proc.stdout
    validate_sample(read_sample(out, "synth-000000"), num_frames=100, num_points=2)  # the override took effect


def test_caption_with_no_nouns_is_a_reject(clip, tmp_path, capsys):
    rc, out, err = run(capsys, clip["video"], "It moves quickly and then stops.", tmp_path / "out", clip["boxes"])
    assert rc == 1 and out == ""
    assert err.strip() == "pite annotate-clip: rejected at nouns: no noun phrases in caption"
    assert not (tmp_path / "out").exists()


def test_empty_caption_is_a_reject(clip, tmp_path, capsys):
    rc, _, err = run(capsys, clip["video"], "   ", tmp_path / "out", clip["boxes"])
    assert rc == 1 and err.strip() == "pite annotate-clip: rejected at nouns: empty caption"


def test_missing_boxes_with_the_given_grounder_is_a_clear_error(clip, tmp_path, capsys):
    rc, out, err = run(capsys, clip["video"], clip["caption"], tmp_path / "out")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--boxes" in err and "ground.backend=given" in err and "ground.backend=groundingdino" in err


@pytest.mark.parametrize("boxes, reason", [
    ("[{not json", "--boxes: not valid JSON"),
    ("no-such-boxes.json", "--boxes: no-such-boxes.json is neither a JSON list nor a file"),
])
def test_bad_boxes_argument(clip, tmp_path, capsys, boxes, reason):
    rc, _, err = run(capsys, clip["video"], clip["caption"], tmp_path / "out", boxes)
    assert rc == 2 and err.startswith(f"pite annotate-clip: {reason}"), err


def test_missing_video_is_a_decode_reject(tmp_path, capsys):
    rc, _, err = run(capsys, tmp_path / "nope.mp4", "A red ball.", tmp_path / "out", [])
    assert rc == 1 and err.startswith("pite annotate-clip: rejected at decode: ") and "nope.mp4" in err, err


def test_every_outcome_that_is_not_a_clean_object_is_recorded(clip, tmp_path, capsys):
    caption = clip["caption"] + EXTRA
    diamond, triangle = clip["boxes"]
    boxes = [
        diamond,
        {**triangle, "box": [200, 200, 260, 250]},  # wholly right of / below a 128 x 128 frame
        {"phrase": "a blue cup", "frame": 0, "box": [50, 50, 50, 80]},  # zero width
        {"phrase": "a small lamp", "frame": 500, "box": [10, 10, 40, 40]},  # the clip has 30 frames
        {"phrase": "a purple elephant", "frame": 0, "box": [0, 0, 10, 10]},  # no phrase of the caption
    ]  # "a wooden chair" gets no box at all
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))  # --boxes also takes a file
    rc, out, err = run(capsys, clip["video"], caption, tmp_path / "out", str(boxes_file))
    assert rc == 0, err
    assert out.startswith("synth-000000: 1 objects (a purple diamond), 4 dropped, "), out
    m = read_sample(tmp_path / "out", "synth-000000").meta
    assert [o["phrase"] for o in m["objects"]] == ["a purple diamond"]
    dropped = {d["phrase"]: d["reason"] for d in m["dropped"]}
    assert dropped == {
        "a striped yellow triangle": "box outside the frame",
        "a blue cup": "degenerate box",
        "a small lamp": "frame 500 outside the clip",
        "a wooden chair": "no box given",
    }
    for d in m["dropped"]:
        assert caption[slice(*d["char_span"])] == d["phrase"]
    assert len(m["unmatched"]) == 1 and m["unmatched"][0]["phrase"] == "a purple elephant"
    assert "no noun phrase" in m["unmatched"][0]["reason"]


def test_a_clip_with_no_object_left_is_a_reject_naming_the_reasons(clip, tmp_path, capsys):
    boxes = [{"phrase": "a purple diamond", "frame": 0, "box": [-80, 10, -5, 60]}]  # left of the frame
    rc, _, err = run(capsys, clip["video"], clip["caption"], tmp_path / "out", boxes)
    assert rc == 1
    assert err.strip() == ("pite annotate-clip: rejected at ground: no phrase grounded "
                           "(1 x box outside the frame, 1 x no box given)")
    assert not (tmp_path / "out").exists()


@pytest.mark.samples
def test_real_footage_cat(tmp_path, capsys):
    if not (SAMPLES / "manifest.jsonl").is_file():
        pytest.skip(f"no sample footage at {SAMPLES}")
    rows = {r["video_id"]: r for r in map(json.loads, (SAMPLES / "manifest.jsonl").read_text().splitlines())}
    row = rows["cat"]
    rc, out, err = run(capsys, SAMPLES / row["video"], row["caption"], tmp_path / "out", row["boxes"])
    assert rc == 0, err
    assert out.startswith("cat: 1 objects (A fluffy cat), 2 dropped, T=100"), out
    s = read_sample(tmp_path / "out", "cat")
    validate_sample(s, num_frames=100, num_points=3)
    m = s.meta
    assert (m["width"], m["height"]) == (368, 480)  # displayed size
    assert m["frame_indices"][0] == 0 and m["frame_indices"][-1] == 86  # 87 frames -> 100 samples, repeats
    assert {d["phrase"]: d["reason"] for d in m["dropped"]} == {"a grey sofa": "no box given",
                                                                "two pillows": "no box given"}
    x0, y0, x1, y1 = row["boxes"][0]["box"]
    assert m["objects"][0]["box"] == pytest.approx([x0 / 368, y0 / 480, x1 / 368, y1 / 480])
    # At the grounding frame the points lie inside the given box, and the tracker keeps most points most of the time.
    pts = s.traj[0, :, 0].astype(np.float64) * [368, 480]
    assert ((pts >= [x0, y0]) & (pts <= [x1, y1])).all(), pts
    assert s.vis[0, :, 0].all() and s.vis.mean() > 0.3


def test_viz_draws_an_annotate_clip_output_without_a_key(clip, tmp_path, capsys):
    from pipelines.viz import main as viz_main

    rc, _, err = run(capsys, clip["video"], clip["caption"], tmp_path / "out", clip["boxes"])
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "annotate-clip.json").read_text())["key"] == "synth-000000"
    assert viz_main([str(tmp_path / "out"), "--out", str(tmp_path / "tracks.png"), "--tiles", "4"]) == 0
    import cv2

    assert cv2.imread(str(tmp_path / "tracks.png")) is not None


@pytest.mark.parametrize("phrase, box, reason", [
    ("a purple diamond", [0.1, 0.1, 0.5, 0.5], "box looks normalised"),
    ("a purple diamond", [100, 100, 1200, 1200], "box reaches far beyond the 128x128 frame"),
    ("the diamond", [10, 10, 60, 60], "given phrase 'the diamond' is in no noun phrase of the caption"),
])
def test_a_box_that_cannot_be_right_says_why(clip, tmp_path, capsys, phrase, box, reason):
    rc, _, err = run(capsys, clip["video"], clip["caption"], tmp_path / "out",
                     [{"phrase": phrase, "frame": 0, "box": box}])
    assert rc == 1 and reason in err, err
