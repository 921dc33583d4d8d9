"""annotate.schema: shard keys, the Sample <-> members round trip, and validation of every contract field."""

import copy
import io
import json
import re

import numpy as np
import pytest

from annotate.errors import SchemaError
from annotate.schema import MAX_KEY_LEN, Sample, build_sample, sanitize_key, validate_sample

CAPTION = "A red ball rolls past a small dog — près du café."
PHRASES = ["A red ball", "a small dog", "café"]
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def make_sample(video_id="vid-0001", n=2, k=3, t=5, d=8, seed=0, conversations=None, caption=CAPTION) -> Sample:
    """A small valid sample built by hand: n objects of the caption's phrases, K points, T frames, D features."""
    rng = np.random.default_rng(seed)
    objects = []
    for i in range(n):
        phrase = PHRASES[i % len(PHRASES)]
        start = caption.index(phrase)
        objects.append(
            {
                "phrase": phrase,
                "char_span": [start, start + len(phrase)],
                "frame": i % t,
                "source_frame": 3 * (i % t),
                "box": [0.05 * (i % 10), 0.2, 0.05 * (i % 10) + 0.3, 0.9],
                "score": 0.5 + 0.1 * i,
                "mask_area": 120 + i,
            }
        )
    return build_sample(
        video_id=video_id,
        caption=caption,
        width=np.int64(64),  # numpy scalars as a stage would hand them over
        height=48,
        fps=np.float32(25.0),
        duration=2.0,
        frame_indices=np.round(np.linspace(0, 49, t)).astype(int),
        frame_times=np.round(np.linspace(0, 49, t)) / 25.0,
        objects=objects,
        traj=rng.uniform(-0.1, 1.1, size=(n, k, t, 2)) if n else None,  # float64: build_sample casts
        vis=rng.uniform(size=(n, k, t)) > 0.3 if n else None,
        feat=rng.normal(size=(t, d)).astype(np.float32),
        dropped=[{"phrase": "the wind", "char_span": [0, 0], "reason": "no box above threshold"}],
        unmatched=[{"phrase": "a kite", "frame": 0, "box": [0, 0, 1, 1]}],
        provenance={"ground": "given", "track": "lk", "config_hash": "abc123"},
        events=[{"start": 0.0, "end": 1.0, "text": "the ball rolls"}],
        conversations=conversations,
        num_points=k,
    )


# --- keys -------------------------------------------------------------------------------------------------------


def test_ordinary_ids_stay_as_they_are():
    for vid in ["abc123", "dQw4w9WgXcQ", "v_0001", "clip-7", "Yt-_x9"]:
        assert sanitize_key(vid) == vid


def test_unsafe_ids_become_safe_distinct_and_readable():
    ids = [
        "a.b", "a/b", "a b", "a\\b", "a\tb", "a..b", "a_b", "a-b", "a.b.mp4", "../etc/passwd", "café", "cafe",
        "猫の動画", "🐱", "🐶", "", " ", ".", "_hidden", "-opt", "__key__", "x" * 1000, "x" * 999 + "y",
        "dir/sub/clip.0001", "dir/sub/clip.0002",
    ]
    keys = [sanitize_key(v) for v in ids]
    assert len(set(keys)) == len(ids)
    for vid, key in zip(ids, keys):
        assert SAFE.fullmatch(key), (vid, key)
        assert len(key) <= MAX_KEY_LEN
    # the readable part survives cleaning; accents are folded rather than dropped
    assert sanitize_key("a.b").startswith("a_b-")
    assert sanitize_key("café").startswith("cafe-")
    assert sanitize_key("dir/sub/clip.0001").startswith("dir_sub_clip_0001-")
    assert re.fullmatch(r"[0-9a-f]{12}", sanitize_key("🐱"))
    assert sanitize_key("a.b") == sanitize_key("a.b")  # deterministic (no salt, no process state)


def test_an_id_shaped_like_a_hashed_key_cannot_collide_with_one():
    hashed = sanitize_key("a.b")  # "a_b-<12 hex>"
    assert sanitize_key(hashed) != hashed


def test_non_string_id_is_a_schema_error():
    with pytest.raises(SchemaError, match="video_id"):
        sanitize_key(17)


# --- members ----------------------------------------------------------------------------------------------------


def test_build_sample_casts_to_contract_dtypes_and_builtins():
    s = make_sample()
    assert s.traj.dtype == np.float16 and s.traj.shape == (2, 3, 5, 2)
    assert s.vis.dtype == np.bool_ and s.vis.shape == (2, 3, 5)
    assert s.feat.dtype == np.float16 and s.feat.shape == (5, 8)
    assert type(s.meta["width"]) is int and type(s.meta["fps"]) is float
    assert s.meta["frame_indices"] == [0, 12, 24, 37, 49]
    assert s.key == "vid-0001"
    validate_sample(s, num_frames=5, num_points=3)


def test_members_round_trip_exactly():
    s = make_sample(video_id="dir/clip 1.mp4", conversations=[{"from": "human", "value": "Où est le chat ?"}])
    members = s.to_members()
    assert list(members) == ["json", "traj.npy", "vis.npy", "feat.npy"]
    back = Sample.from_members(members)
    assert back.meta == s.meta
    for name in ("traj", "vis", "feat"):
        a, b = getattr(s, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    assert back.to_members() == members
    # JSON is UTF-8 with real characters and sorted keys (the same meta always gives the same bytes)
    text = members["json"].decode("utf-8")
    assert "café" in text and "\\u" not in text
    assert list(json.loads(text)) == sorted(s.meta)


def test_member_bytes_do_not_depend_on_memory_layout():
    s = make_sample()
    t = copy.deepcopy(s)
    t.traj = np.asfortranarray(t.traj)
    assert not t.traj.flags.c_contiguous
    assert t.to_members() == s.to_members()


def test_from_members_refuses_pickles_and_missing_members():
    members = make_sample().to_members()
    buf = io.BytesIO()
    # A pickled (object) array, written on purpose: loading must refuse it.
    np.lib.format.write_array(buf, np.array([{"evil": 1}], dtype=object), **{"allow_pickle": True})
    with pytest.raises(SchemaError, match=r"vis\.npy"):
        Sample.from_members({**members, "vis.npy": buf.getvalue()}, key="k")
    with pytest.raises(SchemaError, match=r"feat\.npy: member missing"):
        Sample.from_members({k: v for k, v in members.items() if k != "feat.npy"}, key="k")
    with pytest.raises(SchemaError, match="json: not valid"):
        Sample.from_members({**members, "json": b"{not json"}, key="k")


def test_nan_in_json_cannot_be_serialised():
    s = make_sample()
    s.meta["objects"][0]["score"] = float("nan")
    with pytest.raises(SchemaError, match="json"):
        s.to_members()


# --- validation -------------------------------------------------------------------------------------------------


def _set(path, value):
    def mutate(s):
        target = s.meta
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(s):
        target = s.meta
        for p in path[:-1]:
            target = target[p]
        del target[path[-1]]

    return mutate


def _array(name, fn):
    def mutate(s):
        setattr(s, name, fn(getattr(s, name)))

    return mutate


def _nan_at_start(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


def _drop_last_object(s):
    s.meta["objects"].pop()


CASES = [
    (_delete(["caption"]), "caption: missing"),
    (_delete(["provenance"]), "provenance: missing"),
    (_set(["width"], "64"), "width"),
    (_set(["height"], 0), "height"),
    (_set(["fps"], 0), "fps"),
    (_set(["duration"], float("inf")), "duration"),
    (_set(["frame_indices"], [0, 12, 24, 49, 37]), "frame_indices: not in increasing order"),
    (_set(["frame_times"], [0.0, 0.5]), "frame_times: has 2 entries"),
    (_set(["objects"], {"phrase": "x"}), "objects: expected a list"),
    (_delete(["objects", 0, "score"]), r"objects\[0\]\.score: missing"),
    (_set(["objects", 1, "char_span"], [2, 13]), r"objects\[1\]\.char_span: caption\[2:13\]"),
    (_set(["objects", 0, "char_span"], [40, 400]), r"objects\[0\]\.char_span: .* not inside the caption"),
    (_set(["objects", 0, "char_span"], [0.0, 10.0]), r"objects\[0\]\.char_span: expected"),
    (_set(["objects", 0, "frame"], 5), r"objects\[0\]\.frame: 5 is not a frame index in \[0, 5\)"),
    (_set(["objects", 0, "frame"], -1), r"objects\[0\]\.frame"),
    (_set(["objects", 0, "source_frame"], 1.5), r"objects\[0\]\.source_frame"),
    (_set(["objects", 0, "box"], [0.5, 0.2, 0.4, 0.9]), r"objects\[0\]\.box: .* not a normalised"),
    (_set(["objects", 0, "box"], [0.0, 0.2, 1.2, 0.9]), r"objects\[0\]\.box"),
    (_set(["objects", 0, "box"], [0.0, 0.2, 0.3]), r"objects\[0\]\.box: expected 4"),
    (_set(["objects", 0, "box"], [float("nan"), 0.2, 0.3, 0.9]), r"objects\[0\]\.box: expected 4 finite"),
    (_set(["objects", 0, "score"], True), r"objects\[0\]\.score"),
    (_set(["objects", 0, "mask_area"], -3), r"objects\[0\]\.mask_area"),
    (_set(["objects", 0, "outline"], [[[0.1, 0.1], [0.2, 0.1]]]), r"objects\[0\]\.outline: expected polygons"),
    (_set(["objects", 0, "outline"], [[[0.1, 0.1], [1.2, 0.1], [0.2, 0.3]]]), r"objects\[0\]\.outline"),
    (_set(["dropped"], [{"phrase": "the wind"}]), "dropped: entry 0"),
    (_set(["unmatched"], ["a kite"]), "unmatched"),
    (_set(["events"], [{"start": 2.0, "end": 1.0, "text": "x"}]), "events: entry 0"),
    (_set(["conversations"], [{"from": "human"}]), "conversations: turn 0"),
    (_drop_last_object, r"traj: shape \(2, 3, 5, 2\) has 2 objects, json has 1"),
    (_array("traj", lambda a: a.astype(np.float32)), "traj: dtype float32, expected float16"),
    (_array("vis", lambda a: a.astype(np.uint8)), "vis: dtype uint8, expected bool"),
    (_array("feat", lambda a: a.astype(np.float32)), "feat: dtype float32"),
    (_array("traj", lambda a: a[..., :1]), r"traj: shape \(2, 3, 5, 1\)"),
    (_array("traj", lambda a: a[:, :, :4]), "traj: shape"),
    (_array("vis", lambda a: a[:, :2]), r"vis: shape \(2, 2, 5\), expected \(2, 3, 5\)"),
    (_array("feat", lambda a: a[:4]), "feat: shape .* has 4 frames, frame_indices has 5"),
    (_array("feat", lambda a: a[0]), "feat: shape .* has 1 dims"),
    (_array("traj", _nan_at_start), "traj: 1 values are not finite"),
    (_array("feat", lambda a: np.full_like(a, np.inf)), "feat: 40 values are not finite"),
    (_array("vis", lambda a: a.tolist()), "vis: expected a numpy array"),
]


@pytest.mark.parametrize("mutate,message", CASES, ids=[m for _, m in CASES])
def test_validation_names_the_key_and_field(mutate, message):
    s = make_sample()
    validate_sample(s)  # valid before
    mutate(s)
    with pytest.raises(SchemaError, match=r"^sample 'vid-0001': " + message) as info:
        validate_sample(s)
    assert "\n" not in str(info.value)


def test_config_sizes_are_enforced_when_given():
    s = make_sample(k=3, t=5)
    validate_sample(s, num_frames=5, num_points=3)
    with pytest.raises(SchemaError, match="frame_indices: has 5 frames, config says T=100"):
        validate_sample(s, num_frames=100)
    with pytest.raises(SchemaError, match="traj: .* K=3 points, config says K=4"):
        validate_sample(s, num_points=4)


def test_no_objects_only_with_conversations():
    with pytest.raises(SchemaError, match="objects: empty"):
        validate_sample(make_sample(n=0))
    turns = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "From 00 to 17, a ball rolls."}]
    s = make_sample(n=0, conversations=turns)
    assert s.traj.shape == (0, 3, 5, 2) and s.vis.shape == (0, 3, 5)
    validate_sample(s)
    assert Sample.from_members(s.to_members()).traj.shape == (0, 3, 5, 2)


def test_off_frame_trajectory_values_are_allowed():
    s = make_sample()
    s.traj[0, 0, 0] = [-0.5, 1.7]  # outside [0, 1] means off-frame, not an error
    validate_sample(s)


def test_video_id_must_be_a_non_empty_string():
    for bad, name in (("", sanitize_key("")), (5, "<no video_id>")):
        s = make_sample()
        s.meta["video_id"] = bad
        with pytest.raises(SchemaError, match=f"^sample '{name}': video_id: expected a non-empty string"):
            validate_sample(s)


def test_message_names_a_sanitised_key():
    s = make_sample(video_id="dir/clip 1.mp4")
    s.meta["fps"] = -1.0
    with pytest.raises(SchemaError, match=rf"^sample '{sanitize_key('dir/clip 1.mp4')}': fps"):
        validate_sample(s)


def test_a_mask_outline_is_normalised_polygons_of_its_largest_parts():
    from annotate.assemble import mask_outline

    mask = np.zeros((100, 200), bool)
    mask[10:30, 20:60] = True  # a rectangle: four corners
    mask[60:90, 100:190] = True  # a larger one, listed first
    mask[95:97, 5:7] = True  # a speck, the third part
    polys = mask_outline(mask, parts=2)
    assert len(polys) == 2 and [len(p) for p in polys] == [4, 4]
    xs, ys = zip(*polys[0])
    assert (min(xs), max(xs), min(ys), max(ys)) == pytest.approx((100.5 / 200, 189.5 / 200, 60.5 / 100, 89.5 / 100))
    disc = np.hypot(*np.mgrid[-50:50, -50:50]) < 40
    assert sum(len(p) for p in mask_outline(disc, max_points=12)) <= 12
    assert mask_outline(np.zeros((8, 8), bool)) == []
