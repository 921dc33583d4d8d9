"""`pite viz`: decoding at a sample's source indices, drawing tracks where they are, PNG / mp4 / GIF output."""

import json

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotate.draw import colour, contrasting_colours
from annotate.schema import build_sample
from annotate.synthetic import encode_mp4
from pipelines import viz
from pipelines.cli import main as cli_main
from pipelines.shards import ShardWriter

W, H, N_FRAMES = 96, 64, 30


def moving_square_video(path):
    """Frame i: grey level 8*i everywhere, a white 8x8 square whose top-left is at (2*i, 20)."""
    frames = np.zeros((N_FRAMES, H, W, 3), np.uint8)
    for i in range(N_FRAMES):
        frames[i] = 8 * i
        frames[i, 20:28, 2 * i:2 * i + 8] = 255
    path.write_bytes(encode_mp4(frames, fps=10.0))
    return frames


def square_centre(i):
    """Normalised centre of the square in frame i."""
    return ((2 * i + 4) / W, 24 / H)


@pytest.fixture
def run(tmp_path):
    video = tmp_path / "clip.mp4"
    moving_square_video(video)
    t = 10
    idx = np.round(np.linspace(0, N_FRAMES - 1, t)).astype(int)
    traj = np.array([[[square_centre(i) for i in idx]]])  # (1, 1, T, 2)
    sample = build_sample(
        video_id="clip.one", caption="a white square moves", width=W, height=H, fps=10.0, duration=3.0,
        frame_indices=idx, frame_times=idx / 10.0,
        objects=[{"phrase": "a white square", "char_span": [0, 14], "frame": 0, "source_frame": 0,
                  "box": [0.0, 20 / H, 8 / W, 28 / H], "score": 1.0, "mask_area": 64}],
        traj=traj, vis=np.ones((1, 1, t), bool), feat=np.zeros((t, 8), np.float32), num_points=1)
    out = tmp_path / "run"
    with ShardWriter(out, 0) as w:
        key = w.add(sample)
    (out / "input").mkdir()
    pq.write_table(pa.Table.from_pylist([{"row": 0, "video_id": "clip.one", "video": str(video),
                                          "tar_member": None}]), out / "input" / "pite-000000.parquet")
    return out, key, idx, video


def test_decode_at_returns_the_frames_at_those_source_indices(tmp_path):
    video = tmp_path / "v.mp4"
    moving_square_video(video)
    frames = viz.decode_at(video, [3, 3, 17, 0], max_side=96)
    assert frames.shape == (4, H, W, 3)
    # The background grey level says which frame it is (8 per frame; H.264 moves it by a level or two).
    levels = frames[:, 50:, 50:].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(levels, [24, 24, 136, 0], atol=3)


def test_draw_tracks_puts_the_dot_on_the_point_in_each_frame():
    frames = np.zeros((3, 40, 80, 3), np.uint8)
    traj = np.array([[[[0.25, 0.5], [0.5, 0.5], [0.75, 0.25]]]])  # (1, 1, 3, 2)
    out = viz.draw_tracks(frames, traj, labels=[])
    # the dot's colour is the palette's farthest from what the object covers (black here)
    (dot,) = contrasting_colours(viz.object_means(frames, traj * [80, 40], None))
    assert dot != colour(0) and sum(dot) > 300
    for t, (x, y) in enumerate([(20, 20), (40, 20), (60, 10)]):
        # Pixel centres are at +0.5: the point (x, y) falls in pixel (x - 0.5 rounded) = x - 1 or x.
        patch = out[t][y - 2:y + 1, x - 2:x + 1].reshape(-1, 3)
        assert (patch == dot).all(axis=1).any(), f"no dot at frame {t}"
    assert not out[0][:, 50:].any(), "frame 0 has nothing drawn right of its dot"


def test_draw_tracks_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="does not match 3 frames"):
        viz.draw_tracks(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((1, 1, 4, 2)))


def test_viz_png_from_run_input(run, tmp_path):
    out_dir, key, idx, _ = run
    out = tmp_path / "grid.png"
    assert cli_main(["viz", str(out_dir), "--key", "clip.one", "--out", str(out), "--tiles", "4"]) == 0
    img = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert img.shape == (H, 4 * W + 6, 3)  # 4 tiles, 4 columns with 2 px gaps: one row
    # First tile is sample 0 (source frame 0): the track's dot sits on the square's centre (4, 24).
    tile = img[:H, :W]
    sample = viz.find_sample(out_dir, "clip.one")
    frames = viz.decode_at(viz.video_of(out_dir, sample.meta["video_id"]), sample.meta["frame_indices"], max_side=480)
    pixels = sample.traj.astype(np.float64) * [frames.shape[2], frames.shape[1]]
    (dot,) = contrasting_colours(viz.object_means(frames, pixels, sample.vis))
    assert (np.abs(tile[22:26, 2:6].astype(int) - dot).sum(-1) < 60).any()


def test_viz_mp4_and_gif_have_every_sample(run, tmp_path):
    out_dir, key, idx, video = run
    for ext in ("mp4", "gif"):
        out = tmp_path / f"s.{ext}"
        assert viz.main([str(out_dir), "--key", key, "--out", str(out), "--video", str(video)]) == 0
        with av.open(str(out)) as c:
            n = sum(1 for _ in c.decode(video=0))
        assert n == len(idx)


def test_viz_unknown_key_is_a_one_line_error(run, capsys):
    out_dir, *_ = run
    assert viz.main([str(out_dir), "--key", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sample with key or video_id 'nope'" in err and err.count("\n") == 1


def test_viz_without_input_needs_video(run, capsys):
    out_dir, key, *_ = run
    for f in (out_dir / "input").iterdir():
        f.unlink()
    assert viz.main([str(out_dir), "--key", key]) == 2
    assert "pass --video" in capsys.readouterr().err


def test_unknown_format(tmp_path):
    with pytest.raises(Exception, match="unknown output format"):
        viz.save_frames([np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.webp")
