"""annotate.decode.video: which frames are decoded, at what size and orientation, and one clear error per kind of bad file.

Videos are written with PyAV (libx264, B-frames on) into tmp dirs. Frame i is a flat colour that spells i
(red = 30 + 10 * (i % 20), green = 30 + 50 * (i // 20)), so a decoded frame tells which source frame it is.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

import annotate.decode.video as video
from annotate.errors import DecodeError
from annotate.decode.video import decode_clip, probe, sample_positions, tracking_positions
from annotate.frames import decoded_size
from tests.annotate_helpers import frame_ids, index_colour, textured, write_video

SAMPLES = Path(__file__).parents[1].parent / "shared" / "samples"


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    """30 frames, 25 fps, 64x48, moov first (so it can be cut short and still open)."""
    return write_video(tmp_path_factory.mktemp("v") / "clip30.mp4", container_options={"movflags": "faststart"})


# ---------------------------------------------------------------- the pure parts, on worked examples


def test_sample_positions_worked_examples():
    assert sample_positions(30, 10).tolist() == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    # n < T: first and last kept, repeats allowed
    assert sample_positions(5, 8).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    assert sample_positions(1, 4).tolist() == [0, 0, 0, 0]


def test_tracking_positions_stride_and_last():
    # 25 fps at up to 10 fps: every 3rd frame (8.3 fps), plus the last one
    assert tracking_positions(30, 25.0, 10.0).tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert tracking_positions(7, 29.97, 10.0).tolist() == [0, 3, 6]
    assert tracking_positions(5, 10.0, 10.0).tolist() == [0, 1, 2, 3, 4]  # fps <= track_fps: every frame
    assert tracking_positions(5, 5.0, 10.0).tolist() == [0, 1, 2, 3, 4]


def test_decoded_size_bounds_the_longer_side_and_never_upscales():
    assert decoded_size(3840, 2160, 640) == (640, 360, 1 / 6)
    assert decoded_size(180, 320, 160) == (90, 160, 0.5)
    assert decoded_size(64, 48, 640) == (64, 48, 1.0)


# ---------------------------------------------------------------- decoding


def test_probe_reads_counts_rate_and_size(clip30):
    info = probe(clip30)
    assert (info.width, info.height, info.num_frames, info.fps, info.rotation) == (64, 48, 30, 25.0, 0)
    assert info.duration == pytest.approx(1.2)
    assert (info.first_index, info.start_time) == (0, 0.0)
    clipped = probe(clip30, start=0.4, end=0.8)
    assert (clipped.first_index, clipped.num_frames) == (10, 10)
    assert clipped.start_time == pytest.approx(0.4) and clipped.duration == pytest.approx(0.4)


def test_samples_follow_the_design_formula_and_hold_those_frames(clip30):
    clip = decode_clip(clip30, num_samples=10, track_fps=10.0)
    assert clip.sample_indices.tolist() == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert frame_ids(clip.sample_frames).tolist() == clip.sample_indices.tolist()
    np.testing.assert_allclose(clip.sample_times, clip.sample_indices / 25.0)
    assert clip.sample_frames.dtype == np.uint8 and clip.sample_frames.shape == (10, 48, 64, 3)


def test_more_samples_than_frames_repeat_frames(clip30):
    clip = decode_clip(clip30, num_samples=100)
    expected = np.round(np.linspace(0, 29, 100)).astype(int)
    assert clip.sample_indices.tolist() == expected.tolist()
    assert frame_ids(clip.sample_frames).tolist() == expected.tolist()
    assert len(clip.track_frames) == 11  # only the tracking frames are held apart from the samples


def test_tracking_frames_are_the_stride_plus_extra_indices(clip30):
    clip = decode_clip(clip30, num_samples=4, track_fps=10.0, extra_indices=[4, 28, 3])
    assert clip.track_indices.tolist() == [0, 3, 4, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29]
    assert frame_ids(clip.track_frames).tolist() == clip.track_indices.tolist()
    np.testing.assert_allclose(clip.track_times, clip.track_indices / 25.0)
    assert clip.track_position(28) == 11
    with pytest.raises(KeyError):
        clip.track_position(5)
    sample_rows = clip.sample_track_positions()  # samples 0, 10, 19, 29: 0 and 29 are tracking frames
    assert clip.sample_indices.tolist() == [0, 10, 19, 29] and sample_rows.tolist() == [0, -1, -1, 12]


def test_fast_track_rate_takes_every_frame(clip30):
    clip = decode_clip(clip30, num_samples=3, track_fps=30.0)
    assert clip.track_indices.tolist() == list(range(30))
    assert frame_ids(clip.track_frames).tolist() == list(range(30))


def test_start_end_clip_keeps_absolute_indices_and_clip_times(clip30):
    clip = decode_clip(clip30, num_samples=4, track_fps=10.0, start=0.4, end=0.8, extra_indices=[11])
    assert (clip.info.first_index, clip.info.num_frames) == (10, 10)
    assert clip.info.start_time == pytest.approx(0.4)
    assert clip.sample_indices.tolist() == [10, 13, 16, 19]
    assert frame_ids(clip.sample_frames).tolist() == [10, 13, 16, 19]
    np.testing.assert_allclose(clip.sample_times, [0.0, 0.12, 0.24, 0.36])  # seconds from the clip start
    assert clip.track_indices.tolist() == [10, 11, 13, 16, 19]
    assert frame_ids(clip.track_frames).tolist() == [10, 11, 13, 16, 19]


def test_late_clip_seeks_and_still_lands_on_the_right_frames(tmp_path, monkeypatch):
    path = write_video(tmp_path / "gop.mp4", n=100, options={"g": "10"})  # a keyframe every 10 frames
    seeks = []
    real_pass = video._decode_pass
    # record (seeks?, indexed by pts?) of each decode pass
    monkeypatch.setattr(video, "_decode_pass", lambda *a: seeks.append((a[5], a[2].pts is not None)) or real_pass(*a))
    clip = decode_clip(path, num_samples=5, start=2.0, end=2.5)
    assert seeks == [(True, True)]
    assert clip.sample_indices.tolist() == [50, 53, 56, 59, 62]
    assert frame_ids(clip.sample_frames).tolist() == [50, 53, 56, 59, 62]
    # A seek that lands past the first frame wanted falls back to reading from the start.
    seeks.clear()
    monkeypatch.setattr(video, "_SEEK_MARGIN_S", -3.0)
    clip = decode_clip(path, num_samples=5, start=2.0, end=2.5)
    assert seeks == [(True, True), (False, True)]
    assert frame_ids(clip.sample_frames).tolist() == [50, 53, 56, 59, 62]


def test_avi_is_indexed_by_decoder_order(tmp_path, monkeypatch):
    path = write_video(tmp_path / "b.avi", n=20)  # H.264 with B-frames: AVI's pts are decode order
    clip = decode_clip(path, num_samples=20)
    assert frame_ids(clip.sample_frames).tolist() == list(range(20))
    # Were AVI trusted for pts, decoded frames would disagree with them and the decode is redone in order mode.
    monkeypatch.setattr(video, "ORDER_ONLY_FORMATS", ())
    clip = decode_clip(path, num_samples=20, start=0.2, end=0.6)
    assert clip.sample_indices[0] == 5
    assert frame_ids(clip.sample_frames).tolist() == clip.sample_indices.tolist()


def test_a_frame_that_does_not_decode_is_an_error_not_a_shift(clip30, monkeypatch):
    """A frame the demuxer lists but the decoder never gives (here a phantom one) must not shift the indices."""
    real_scan = video._scan

    def scan_with_phantom(src, name, end, by_order):
        tl = real_scan(src, name, end, by_order)
        if tl.pts is None:  # decoder-order mode: one frame more than decodes
            return video._Timeline(times=np.arange(len(tl.times) + 1) / tl.fps, pts=None, fps=tl.fps)
        pts = np.insert(tl.pts, 5, (tl.pts[4] + tl.pts[5]) // 2)  # a frame between frames 4 and 5
        return video._Timeline(times=np.insert(tl.times, 5, (tl.times[4] + tl.times[5]) / 2), pts=pts, fps=tl.fps)

    monkeypatch.setattr(video, "_scan", scan_with_phantom)
    assert "corrupt: only 30 of 31 frames decode" in decode_error(clip30, num_samples=31)


def test_one_frame_video_is_valid(tmp_path):
    clip = decode_clip(write_video(tmp_path / "one.mp4", n=1), num_samples=5)
    assert clip.info.num_frames == 1
    assert clip.sample_indices.tolist() == [0] * 5 and clip.track_indices.tolist() == [0]
    assert frame_ids(clip.sample_frames).tolist() == [0] * 5
    np.testing.assert_array_equal(clip.sample_times, 0.0)


def test_vertical_and_4k_are_decoded_bounded(tmp_path):
    tall = decode_clip(write_video(tmp_path / "tall.mp4", n=3, w=180, h=320), num_samples=3, max_side=160)
    assert (tall.info.width, tall.info.height) == (180, 320)
    assert tall.size == (90, 160) and tall.scale == 0.5 and tall.sample_frames.shape == (3, 160, 90, 3)
    assert frame_ids(tall.sample_frames).tolist() == [0, 1, 2]
    big = decode_clip(write_video(tmp_path / "4k.mp4", n=2, w=3840, h=2160, options={"preset": "ultrafast"}),
                      num_samples=2)
    assert (big.info.width, big.info.height) == (3840, 2160)
    assert big.size == (640, 360) and big.scale == pytest.approx(1 / 6)
    assert frame_ids(big.sample_frames).tolist() == [0, 1]


def test_resize_averages_areas_and_keeps_positions(tmp_path):
    """1-px black/white stripes average to grey (an area resize, not point sampling), and a left/right split at
    source x = 120 of 240 stays at decoded x = 30 of 60."""

    def stripes_then_split(i, h, w):
        img = np.zeros((h, w, 3), np.uint8)
        if i == 0:
            img[:, 1::2] = 255
        else:
            img[:, w // 2:] = 255
        return img

    path = write_video(tmp_path / "area.mp4", n=2, w=240, h=96, paint=stripes_then_split, options={"qp": "0"})
    clip = decode_clip(path, num_samples=2, max_side=60)  # 4 source pixels to 1
    assert clip.size == (60, 24)
    stripes, split = clip.sample_frames[0].astype(int), clip.sample_frames[1, 12, :, 0].astype(int)
    assert np.abs(stripes - 128).max() < 10
    assert split[:29].max() < 20 and split[31:].min() > 235


@pytest.mark.parametrize("ccw, cw, where",
                         [(90, 270, "bottom-left"), (-90, 90, "top-right"), (180, 180, "bottom-right")])
def test_rotation_metadata_is_applied(tmp_path, ccw, cw, where):
    """A red top-left quadrant in a 64x48 coded frame, shown turned as the display matrix says."""

    def quadrant(i, h, w):
        img = np.zeros((h, w, 3), np.uint8)
        img[: h // 2, : w // 2] = (255, 0, 0)
        return img

    path = write_video(tmp_path / "rot.mp4", n=2, rotation=ccw, paint=quadrant)
    clip = decode_clip(path, num_samples=1)
    info = probe(path)
    assert info.rotation == cw and clip.info.rotation == cw
    size = (48, 64) if ccw % 180 else (64, 48)
    assert (info.width, info.height) == size and clip.size == size
    red = clip.sample_frames[0, :, :, 0] > 128
    h, w = red.shape
    corners = {"top-left": red[: h // 2, : w // 2], "top-right": red[: h // 2, w // 2:],
               "bottom-left": red[h // 2:, : w // 2], "bottom-right": red[h // 2:, w // 2:]}
    for name, part in corners.items():
        assert part.mean() > 0.9 if name == where else part.mean() < 0.1, name


def test_open_binary_file(clip30):
    with open(clip30, "rb") as f:
        clip = decode_clip(io.BytesIO(f.read()), num_samples=3)
    assert frame_ids(clip.sample_frames).tolist() == [0, 14, 29]  # round(14.5) is 14: numpy rounds half to even


# ---------------------------------------------------------------- one clear message per kind of bad input


def decode_error(path, **kwargs) -> str:
    with pytest.raises(DecodeError) as err:
        decode_clip(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_missing_file(tmp_path):
    assert "missing file" in decode_error(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty file (0 bytes)" in decode_error(tmp_path / "empty.mp4")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("a cat sits on a sofa\n")
    assert "not a video (FFmpeg cannot read it as a media file" in decode_error(tmp_path / "notes.mp4")


def test_audio_only_file(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    assert "not a video (no video stream; streams: audio)" in decode_error(path)


def packets_of(path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet, in file order."""
    with av.open(str(path)) as src:
        return [(p.pos, p.size) for p in src.demux(src.streams.video[0]) if p.size]


def test_corrupt_frame_data(tmp_path, clip30):
    data = bytearray(clip30.read_bytes())
    pos, size = packets_of(clip30)[5]
    data[pos:pos + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    assert "corrupt: undecodable data near frame" in decode_error(tmp_path / "bad.mp4")


def test_truncated_file_with_its_index_first(tmp_path, clip30):
    cut = packets_of(clip30)[12][0]  # cut where frame data 12 starts: 12 whole packets remain
    (tmp_path / "cut.mp4").write_bytes(clip30.read_bytes()[:cut])
    assert "truncated: stream ends after 12 of 30 frames" in decode_error(tmp_path / "cut.mp4")


def test_truncated_file_with_its_index_last(tmp_path):
    path = write_video(tmp_path / "whole.mp4")  # no faststart: the index (moov) is written at the end
    (tmp_path / "cut.mp4").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "corrupt or truncated MP4/MOV container" in decode_error(tmp_path / "cut.mp4")


def test_clip_range_without_frames(clip30):
    assert "clip range [5.0, 6.0) s holds no frames" in decode_error(clip30, start=5.0, end=6.0)
    assert "holds no frames" in decode_error(clip30, start=0.5, end=0.5)


def test_extra_index_outside_the_clip(clip30):
    message = decode_error(clip30, start=0.4, end=0.8, extra_indices=[3])
    assert "frame 3 asked for tracking is outside the clip (source frames 10-19)" in message


# ---------------------------------------------------------------- real footage


@pytest.mark.samples
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="no ../shared/samples next to the repo")
@pytest.mark.parametrize("name, size, n, fps, decoded, tracked",
                         [("apple.mp4", (1296, 720), 50, 10.0, (640, 356), 50),
                          ("cat.mp4", (368, 480), 87, 20.0, (368, 480), 44)])
def test_sample_footage(name, size, n, fps, decoded, tracked):
    import cv2

    clip = decode_clip(SAMPLES / name)
    info = clip.info
    assert ((info.width, info.height), info.num_frames, info.fps, info.rotation) == (size, n, fps, 0)
    assert clip.size == decoded and len(clip.track_indices) == tracked
    assert clip.sample_indices.tolist() == np.round(np.linspace(0, n - 1, 100)).astype(int).tolist()
    # The decoded sample k is source frame k: compare with a plain full decode resized by OpenCV.
    with av.open(str(SAMPLES / name)) as src:
        keep = {0, n // 2, n - 1, n // 3, (n // 2 + n // 3) % n, (n - 1 + n // 3) % n}
        full = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(src.decode(video=0)) if i in keep}
    for k in (0, n // 2, n - 1):
        ref = cv2.resize(full[k], decoded, interpolation=cv2.INTER_AREA).astype(float)
        row = int(np.flatnonzero(clip.sample_indices == k)[0])
        assert np.abs(clip.sample_frames[row] - ref).mean() < 3
        other = cv2.resize(full[(k + n // 3) % n], decoded, interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(clip.sample_frames[row] - other).mean() > 5


# ---------------------------------------------------------------- long clips: lazy tracking frames, max_duration


@pytest.fixture(scope="module")
def clip60(tmp_path_factory) -> Path:
    """60 textured frames, 25 fps, a keyframe every 10 frames (so lazy reads seek)."""
    return write_video(tmp_path_factory.mktemp("v") / "clip60.mp4", n=60, options={"g": "10"}, paint=textured)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "tar-member-bytes"])
def test_lazy_tracking_frames_match_the_in_memory_decode(clip60, as_bytes):
    from annotate.frames import LazyFrames

    source = (lambda: io.BytesIO(clip60.read_bytes())) if as_bytes else (lambda: clip60)
    full = decode_clip(source(), num_samples=7, track_fps=25.0)  # every frame is a tracking frame
    stream = source()
    lazy = decode_clip(stream, num_samples=7, track_fps=25.0, resident_frames=59)
    if as_bytes:
        stream.close()  # the lazy source keeps the compressed bytes, not the stream it was given
    frames = lazy.track_frames
    assert isinstance(full.track_frames, np.ndarray) and isinstance(frames, LazyFrames)
    assert len(frames) == 60 and frames.shape == full.track_frames.shape and lazy.size == full.size
    np.testing.assert_array_equal(lazy.sample_frames, full.sample_frames)
    assert frames.decoded == 0  # nothing decoded before it is asked for
    for i in (0, 7, 31, 59, -1, -25):
        np.testing.assert_array_equal(frames[i], full.track_frames[i])
    for key in (slice(5, 17), slice(None, None, 7), slice(40, None), slice(50, 20, -6), slice(3, 3)):
        np.testing.assert_array_equal(frames[key], full.track_frames[key])
    for key in ([33, 2, 2, 59], np.array([45, 12]), [], [-1, 0]):
        np.testing.assert_array_equal(frames[key], full.track_frames[key])
    assert frame_ids(frames[[33, 2, 2, 59]]).tolist() == [33, 2, 2, 59]
    np.testing.assert_array_equal(np.asarray(frames), full.track_frames)
    np.testing.assert_array_equal(np.stack(list(frames)), full.track_frames)


def test_lazy_frames_decode_only_what_is_asked_and_keep_a_few_single_frames(clip60):
    lazy = decode_clip(clip60, num_samples=3, track_fps=25.0, resident_frames=10).track_frames
    lazy[20:30]
    assert lazy.decoded == 10
    lazy[[44, 41, 44]]
    assert lazy.decoded == 12  # repeats are decoded once
    first = lazy[7]
    first[:] = 0  # a caller drawing on its frame does not change the kept one
    assert lazy[7].any() and lazy.decoded == 13  # the second read of a single frame is kept, not decoded
    for i in range(7):
        lazy[i]
    assert lazy.decoded == 13 + 7
    lazy[6], lazy[3]
    assert lazy.decoded == 20  # the last four single frames are kept ...
    lazy[7]
    assert lazy.decoded == 21  # ... and no more
    with pytest.raises(IndexError, match="out of range for 60 frames"):
        lazy[60]
    with pytest.raises(TypeError):
        lazy[1.5, 2]


def test_decode_stage_keeps_clips_that_fit_one_tracking_window_in_memory(clip30):
    from annotate.config import AnnotateConfig
    from annotate.decode import DecodeStage
    from annotate.frames import LazyFrames
    from annotate.item import ClipItem

    kinds = {}
    for window in (0, 11, 10):  # clip30 has 11 tracking frames at 10 fps
        cfg = AnnotateConfig(num_frames=5)
        cfg.track.window, cfg.track.overlap = window, 2
        item = ClipItem(row=0, video_id="v", video=str(clip30), caption="a clip")
        DecodeStage(cfg).process([item])
        assert item.ok, item.error
        kinds[window] = type(item.clip.track_frames)
    assert kinds == {0: np.ndarray, 11: np.ndarray, 10: LazyFrames}


@pytest.mark.slow
def test_lazy_frames_keep_memory_far_below_the_clip_size(tmp_path):
    """1800 tracking frames at 256x256 (354 MB as one array): read window by window, the lazy source's peak RSS
    growth stays a small fraction of that, while holding them all grows by about that much (the measure works)."""
    import json
    import subprocess
    import sys

    n, side = 1800, 256
    flat = lambda i, h, w: np.broadcast_to(np.array(index_colour(i % 100), np.uint8), (h, w, 3)).copy()  # noqa: E731
    path = write_video(tmp_path / "long.mp4", n=n, w=side, h=side, fps=30, options={"preset": "ultrafast"},
                       paint=flat)
    script = """
import json, sys
import numpy as np
from annotate.decode.video import decode_clip

def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

path, resident = sys.argv[1], sys.argv[2]
decode_clip(path, num_samples=2, track_fps=30.0, max_side=16)  # warm up the decoder's own allocations
before = peak_kb()
clip = decode_clip(path, num_samples=100, track_fps=30.0, max_side=256,
                   resident_frames=None if resident == "all" else int(resident))
frames = clip.track_frames
for a in range(0, len(frames), 184):  # the windowed tracker's reads: 200 frames, 16 shared
    assert frames[a:a + 200].shape[1:] == (256, 256, 3)
print(json.dumps({"frames": len(frames), "growth": (peak_kb() - before) * 1024}))
"""
    full_bytes = n * side * side * 3
    growth = {}
    for resident in ("200", "all"):
        out = subprocess.run([sys.executable, "-c", script, str(path), resident], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parents[1])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["frames"] == n
        growth[resident] = result["growth"]
    print(f"peak RSS growth: lazy {growth['200'] / 2**20:.0f} MiB, resident {growth['all'] / 2**20:.0f} MiB, "
          f"F*h*w*3 = {full_bytes / 2**20:.0f} MiB")
    assert growth["all"] > 0.9 * full_bytes
    assert growth["200"] < 0.25 * full_bytes


def decode_stage_item(path, cfg_changes: dict, **row):
    from annotate.config import AnnotateConfig
    from annotate.decode import DecodeStage
    from annotate.item import ClipItem

    cfg = AnnotateConfig(num_frames=6, **cfg_changes)
    item = ClipItem(row=0, video_id="v", video=str(path), caption="a clip", **row)
    DecodeStage(cfg).process([item])
    return item


@pytest.mark.parametrize("start", [None, 0.4])
def test_max_duration_cut_keeps_the_first_max_duration_seconds(clip30, start):
    item = decode_stage_item(clip30, {"max_duration": 0.5, "long_clips": "cut"}, start=start)
    assert item.ok, item.error
    clip = item.clip
    shorter = decode_clip(clip30, num_samples=6, start=start, end=(start or 0.0) + 0.5)
    first = 10 if start else 0
    assert (clip.info.first_index, clip.info.num_frames) == (first, 13)  # 25 fps: frames at 0.00-0.48 s
    assert clip.info.duration == pytest.approx(0.52)
    # The samples of a cut clip are ordinary samples of the shorter clip.
    assert clip.sample_indices.tolist() == (first + video.sample_positions(13, 6)).tolist()
    np.testing.assert_array_equal(clip.sample_frames, shorter.sample_frames)
    assert clip.track_indices.tolist() == shorter.track_indices.tolist()


def test_max_duration_leaves_shorter_clips_alone(clip30):
    for long_clips in ("cut", "reject"):
        item = decode_stage_item(clip30, {"max_duration": 1.2, "long_clips": long_clips})
        assert item.ok, item.error
        assert item.clip.info.num_frames == 30
    item = decode_stage_item(clip30, {"max_duration": 0.5, "long_clips": "reject"}, start=0.2, end=0.6)
    assert item.ok and item.clip.info.num_frames == 10  # the row's own range fits


def test_max_duration_reject_names_the_duration_and_the_limit(clip30):
    item = decode_stage_item(clip30, {"max_duration": 0.5, "long_clips": "reject"})
    assert not item.ok and item.error[0] == "decode"
    assert item.error[1] == f"{clip30}: the clip lasts 1.20 s, over max_duration=0.5 (long_clips=reject)"
    item = decode_stage_item(clip30, {"max_duration": 0.5, "long_clips": "reject"}, start=0.4, end=1.0)
    assert "the clip lasts 0.60 s, over max_duration=0.5" in item.error[1]


def test_max_duration_without_duration_metadata_scans_packets(tmp_path):
    path = tmp_path / "raw.h264"  # a raw H.264 stream states no duration
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index_colour(i), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as src:
        assert src.duration is None and src.streams.video[0].duration is None
    assert video.video_duration(path) == (pytest.approx(2.0), True)
    item = decode_stage_item(path, {"max_duration": 1.0, "long_clips": "reject"})
    assert "the clip lasts 2.00 s, over max_duration=1" in item.error[1]
    item = decode_stage_item(path, {"max_duration": 1.0, "long_clips": "cut"})
    assert item.ok and item.clip.info.num_frames == 25
    assert frame_ids(item.clip.sample_frames).tolist() == video.sample_positions(25, 6).tolist()


def test_long_clips_setting_is_checked():
    from annotate.config import AnnotateConfig
    from annotate.decode import DecodeStage
    from annotate.errors import ConfigError

    with pytest.raises(ConfigError, match="long_clips: expected cut or reject, got 'drop'"):
        DecodeStage(AnnotateConfig(long_clips="drop"))
    with pytest.raises(ConfigError, match="max_duration: must be >= 0"):
        DecodeStage(AnnotateConfig(max_duration=-1.0))


def test_max_duration_scan_stops_soon_after_the_limit(tmp_path, monkeypatch):
    path = write_video(tmp_path / "four.mp4", n=100)  # 4 s at 25 fps
    monkeypatch.setattr(video, "_stated_seconds", lambda container, stream: None)  # as if nothing were stated
    seconds, exact = video.video_duration(path, limit=0.5)
    assert not exact and 0.5 < seconds < 4.0  # a lower bound: the scan stopped soon after the limit
    item = decode_stage_item(path, {"max_duration": 0.5, "long_clips": "reject"})
    assert f"the clip lasts {seconds:.2f} s or more, over max_duration=0.5" in item.error[1]
