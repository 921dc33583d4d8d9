"""CoTracker3 through the track stage with the real `cotracker` package and random weights: one pass on the synthetic
world against the LK reference, bfloat16 vs float32 parity, and the precision split (annotate/track/cotracker.py).

The tests that need the package skip without it (the Makefile installs it from ../shared/third_party/co-tracker).
Random weights: the numbers mean nothing, but shapes, dtypes, the query convention and the precision of each part
are those of the real model. CoTracker runs at a small working size ([96, 128]) to keep a forward at seconds.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.item import ClipItem, Grounding, Phrase
from annotate.track import make_tracker
from annotate.clip import DecodedClip, VideoInfo

SMALL_SHAPE = [96, 128]
# bfloat16 vs float32 tracks at SMALL_SHAPE on a 24-frame, 256x256 synthetic clip (4 objects x 3 points, one object
# queried at frame 4), CoTracker3 with random weights whose flow and visibility heads are drawn at std 0.02 (the
# published init draws them at 0.001, so tracks barely leave their queries and any precision would agree). Measured
# on 4 clips x 2 seeds (2-core x86 CPU, torch 2.14, CPU autocast): tracks move 40-90 px (median); the largest
# bf16-fp32 distance was 0.41-0.57 px, the median 0.13-0.18 px, visibility agreed on >= 99.3 % of point-frames.
# The bounds are about twice the worst of those: above them, something beyond rounding changed (e.g. the
# correlation leaving float32, which this file checks directly too).
PARITY_MAX_PX = 1.0
PARITY_MEDIAN_PX = 0.35
PARITY_VIS_AGREEMENT = 0.98
LIVELY_HEAD_STD = 0.02


def cotracker_cfg(dtype: str = "float32", backward_pass: bool = False) -> AnnotateConfig:
    cfg = AnnotateConfig()
    cfg.track.backend = "cotracker"
    cfg.track.device = "cpu"
    cfg.track.dtype = dtype
    cfg.track.interp_shape = list(SMALL_SHAPE)
    cfg.track.backward_pass = backward_pass
    return cfg


def random_predictor(seed: int = 0, lively: bool = False):
    """CoTrackerPredictor(checkpoint=None) after torch.manual_seed(seed); `lively` redraws the flow and visibility
    heads at LIVELY_HEAD_STD so the random model moves its points by tens of pixels."""
    import torch
    from cotracker.predictor import CoTrackerPredictor

    torch.manual_seed(seed)
    predictor = CoTrackerPredictor(checkpoint=None)
    if lively:
        with torch.no_grad():
            for head in (predictor.model.updateformer.flow_head, predictor.model.updateformer.vis_conf_head):
                head.weight.normal_(0.0, LIVELY_HEAD_STD)
    return predictor


def synthetic_item(index: int, frames: int = 24) -> ClipItem:
    """A synthetic-world clip as the track stage sees it: every frame a tracking frame, each object grounded at the
    world's own grounding frame, 3 points inside its ground-truth mask there."""
    from annotate.points import sample_points
    from annotate.synthetic import WorldParams, make_clip

    clip = make_clip(0, index, WorldParams(frames=frames))
    gt = clip.gt
    f, h, w = clip.frames.shape[:3]
    times = np.arange(f) / clip.fps
    info = VideoInfo(path="synth.mp4", width=w, height=h, fps=clip.fps, num_frames=f, duration=f / clip.fps)
    item = ClipItem(row=0, video_id=clip.video_id, video="synth.mp4", caption=clip.caption)
    item.clip = DecodedClip(info=info, scale=1.0, sample_indices=np.arange(f), sample_times=times,
                            sample_frames=clip.frames, track_indices=np.arange(f), track_times=times,
                            track_frames=clip.frames)
    ground = [int(o["ground_frame"]) for o in clip.objects]
    item.phrases = [Phrase(o["phrase"], 0, len(o["phrase"])) for o in clip.objects]
    item.groundings = [Grounding(phrase_index=i, track_frame=g, source_frame=g, box=np.asarray(gt.boxes[i, g]))
                       for i, g in enumerate(ground)]
    rng = np.random.default_rng(index)
    item.points = np.stack([sample_points(gt.mask(o, ground[o]), 3, rng) for o in range(gt.n_objects)])
    return item


# --- config, no package needed ----------------------------------------------------------------------------------


def test_track_dtype_auto_is_float32_on_the_cpu_and_unknown_names_the_key():
    class NoModel:  # a predictor without CoTracker3's parts: fine in float32, refused below it
        interp_shape = (384, 512)

    assert AnnotateConfig().track.dtype == "auto"
    stage = make_tracker(cotracker_cfg("auto"), predictor=NoModel())
    stage.setup()
    assert stage.autocast_dtype is None  # auto on the CPU: no autocast at all
    with pytest.raises(ConfigError, match=r"track\.dtype=bfloat16: .*no fnet, corr_mlp, updateformer"):
        make_tracker(cotracker_cfg("bfloat16"), predictor=NoModel()).setup()
    with pytest.raises(ConfigError, match=r"^track\.dtype: unknown dtype 'half'"):
        make_tracker(cotracker_cfg("half"), predictor=NoModel())


def test_the_recipe_asks_for_auto_precision():
    from pathlib import Path

    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/annotate/pite143k.yaml").read_text())
    assert recipe["track"]["dtype"] == "auto" and recipe["track"]["backward_pass"] is False


# --- the real package -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_pass_on_the_synthetic_world_keeps_the_lk_contract():
    pytest.importorskip("cotracker")
    item = synthetic_item(2)  # 4 objects, one grounded at frame 4: the one pass must also fill frames 0-3
    queries = np.array([g.track_frame for g in item.groundings])
    assert queries.max() > 0
    predictor = random_predictor()
    passes = []
    # The predictor calls model.forward directly (no hooks fire there); the feature CNN runs once per pass.
    predictor.model.fnet.register_forward_hook(lambda *_: passes.append(1))
    out = {}
    for name, cfg in (("lk", AnnotateConfig()), ("cotracker", cotracker_cfg("auto"))):
        run = copy.deepcopy(item)
        make_tracker(cfg, predictor=predictor if name == "cotracker" else None).process([run])
        assert run.ok, (name, run.error)
        out[name] = run
    assert len(passes) == 1  # track.backward_pass false: the model ran once, not again on the reversed clip
    n, k, f = len(item.groundings), 3, len(item.clip.track_frames)
    for name, run in out.items():
        assert run.tracks.shape == (n, k, f, 2) and run.tracks.dtype == np.float32, name
        assert run.track_vis.shape == (n, k, f) and run.track_vis.dtype == np.bool_, name
        assert np.isfinite(run.tracks).all(), name
        for o, q in enumerate(queries):
            # Exactly the chosen points at their own frame (as float32, the stage's output type), and visible.
            np.testing.assert_array_equal(run.tracks[o, :, q], item.points[o].astype(np.float32), err_msg=name)
            assert run.track_vis[o, :, q].all(), (name, o)


@pytest.mark.slow
def test_bfloat16_tracks_stay_within_the_parity_bound_of_float32():
    pytest.importorskip("cotracker")
    item = synthetic_item(2)
    predictor = random_predictor(lively=True)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        run = copy.deepcopy(item)
        make_tracker(cotracker_cfg(dtype), predictor=predictor).process([run])
        assert run.ok, (dtype, run.error)
        runs[dtype] = run
    dist = np.linalg.norm(runs["bfloat16"].tracks - runs["float32"].tracks, axis=-1)
    moved = np.linalg.norm(runs["float32"].tracks - item.points[:, :, None], axis=-1)
    assert np.median(moved) > 10  # the lively random model really moves its points: the comparison means something
    assert dist.max() > 0  # bfloat16 really ran
    assert dist.max() <= PARITY_MAX_PX and np.median(dist) <= PARITY_MEDIAN_PX, (dist.max(), np.median(dist))
    agreement = np.mean(runs["bfloat16"].track_vis == runs["float32"].track_vis)
    assert agreement >= PARITY_VIS_AGREEMENT, agreement


@pytest.mark.slow
def test_autocast_covers_the_dense_parts_and_leaves_the_correlation_in_float32():
    pytest.importorskip("cotracker")
    import torch
    from torch.overrides import TorchFunctionMode

    class EinsumDtypes(TorchFunctionMode):  # records the dtype of every einsum: CoTracker's correlation volume
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.einsum:
                self.seen.append(out.dtype)
            return out

    predictor = random_predictor()
    model = predictor.model
    dtypes = {}

    def record(name):
        def hook(_module, _inputs, out):  # returns None: the output is only looked at
            dtypes.setdefault(name, out.dtype)
        return hook

    for name, layer in (("fnet", model.fnet.conv1), ("corr_mlp", model.corr_mlp.fc1),
                        ("updateformer", model.updateformer.input_transform)):
        layer.register_forward_hook(record(name))
    item = synthetic_item(1, frames=8)
    stage = make_tracker(cotracker_cfg("bfloat16"), predictor=predictor)
    with EinsumDtypes() as einsums:
        stage.process([item])
    assert item.ok, item.error
    assert dtypes == {"fnet": torch.bfloat16, "corr_mlp": torch.bfloat16, "updateformer": torch.bfloat16}
    assert einsums.seen and set(einsums.seen) == {torch.float32}
    # The parts' own forwards are back: nothing of the autocast outlives the call.
    assert all("forward" not in vars(getattr(model, part)) for part in ("fnet", "corr_mlp", "updateformer"))
