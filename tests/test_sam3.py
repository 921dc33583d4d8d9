"""SAM 3 in the chain: tiny random SAM 3 grounding and segmenting in one model, the three mask propagators
(SAM 2.1, EdgeTAM, SAM 3's tracker) checking every track through `mask_agreement`, in the embedded loop and in the
SAM 3 recipe on a Ray head with logical GPUs. Weights are `pite weights random --recipe sam3` at the tiny size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate.assemble import assemble
from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.pipeline import ClipAnnotator, build_stages, make_item
from annotate.propagate import VideoPropagator, agreement_counts
from annotate.synthetic import WorldParams
from pipelines.shards import iter_samples
from pipelines.weights_sam3 import VIDEO_DIRS, sam3_models
from tests.annotate_helpers import write_manifest
from tests.ray_heads import start_head

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sam3-weights")
    sam3_models(out, "tiny", 0)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("sam3-clips")
    manifest = write_manifest(root, 3, 3, WorldParams(width=128, height=96, frames=30))
    return root, [json.loads(line) for line in manifest.read_text().splitlines()]


def sam3_cfg(weights: Path, propagation: str = "none", **confidence) -> AnnotateConfig:
    cfg = AnnotateConfig()
    cfg.num_frames = 16
    cfg.ground.backend, cfg.ground.weights = "sam3", str(weights / "sam3")
    cfg.ground.box_threshold, cfg.ground.every_n_frames = 0.0, 10  # random weights score ~0.25: keep their best
    cfg.segment.backend = "auto"
    cfg.confidence.propagation = propagation
    if propagation != "none":
        cfg.confidence.weights = str(weights / VIDEO_DIRS[propagation])
    for key, value in confidence.items():
        setattr(cfg.confidence, key, value)
    return cfg


def annotate(cfg: AnnotateConfig, clips) -> list:
    root, rows = clips
    items = [make_item(i, r["video_id"], str(root / r["video"]), r["caption"]) for i, r in enumerate(rows)]
    ClipAnnotator(cfg).setup().annotate(items)
    return items


def test_sam3_grounds_and_segments_in_one_model(weights, clips):
    cfg = sam3_cfg(weights)
    items = annotate(cfg, clips)
    assert all(it.ok for it in items), [it.error for it in items]
    for it in items:
        assert len(it.groundings) + len(it.dropped) == len(it.phrases)
        for g, mask in zip(it.groundings, it.masks):
            assert mask.any() and g.mask is None  # handed to the segment stage, not carried twice
            x0, y0, x1, y1 = g.box
            assert 0 <= x0 < x1 <= it.clip.ground_size[0] and 0 <= y0 < y1 <= it.clip.ground_size[1]
        sample = assemble(it, cfg)
        backends = sample.meta["provenance"]["backends"]
        assert backends["ground"].startswith("sam3/") and backends["segment"] == "auto/masks from ground.backend=sam3"
        assert "propagate" not in backends and "mask_agreement" not in backends["confidence"]
        assert all(o["outline"] and "mask_agreement" not in o["confidence_signals"] for o in sample.meta["objects"])


def test_sam3_head_rows_batched_give_what_one_row_at_a_time_gives(weights, clips):
    one, many = sam3_cfg(weights), sam3_cfg(weights)
    one.ground.batch_size, many.ground.batch_size = 1, 16
    for a, b in zip(annotate(one, clips), annotate(many, clips)):
        assert [g.phrase_index for g in a.groundings] == [g.phrase_index for g in b.groundings]
        for ga, gb in zip(a.groundings, b.groundings):
            np.testing.assert_allclose(ga.box, gb.box, atol=1e-3)
            assert abs(ga.score - gb.score) < 1e-4


@pytest.mark.parametrize("family,prompt", [("sam2_video", "mask"), ("edgetam_video", "mask"), ("sam3_tracker", "mask"),
                                           ("sam2_video", "box")])
def test_every_propagator_checks_every_track(weights, clips, family, prompt):
    cfg = sam3_cfg(weights, family, prompt=prompt)
    items = annotate(cfg, clips)
    assert all(it.ok for it in items), [it.error for it in items]
    for it in items:
        sample = assemble(it, cfg)
        assert sample.meta["provenance"]["backends"]["propagate"].startswith(f"{family}/{prompt}/")
        for o in sample.meta["objects"]:
            assert 0.0 <= o["confidence_signals"]["mask_agreement"] <= 1.0


def test_propagation_memory_stays_flat_on_a_long_clip(weights, tmp_path):
    root = tmp_path / "long"
    manifest = write_manifest(root, 4, 1, WorldParams(width=96, height=64, frames=150))
    row = json.loads(manifest.read_text().splitlines()[0])
    cfg = sam3_cfg(weights, "sam2_video")
    stages = build_stages(cfg)
    item = make_item(0, row["video_id"], str(root / row["video"]), row["caption"])
    ClipAnnotator(cfg, stages).setup().annotate([item])
    assert item.ok, item.error
    propagator = next(s for s in stages if isinstance(s, VideoPropagator))
    assert len(item.clip.track_frames) == 150
    # frames the session held at once: the model's memory and the frame in hand, not the clip
    assert propagator.peak_held <= propagator.keep + 1 < 150


def test_auto_segment_needs_a_grounder_that_makes_masks(weights, clips):
    cfg = sam3_cfg(weights)
    cfg.ground.backend = "given"
    with pytest.raises(ConfigError, match="segment.backend: auto takes the grounder's masks"):
        ClipAnnotator(cfg).setup()
    cfg = sam3_cfg(weights, "sam2_video")
    cfg.confidence.weights = None
    stage = VideoPropagator(cfg)
    assert stage.problems()[-1].startswith("confidence.weights: not set")


def test_mask_agreement_counts_by_hand():
    masks = np.zeros((3, 64, 64), bool)
    masks[:2, 10:30, 10:30] = True  # present on frames 0 and 1, gone on frame 2
    tracks = np.array([[[20, 20], [20, 20], [20, 20]], [[50, 50], [20, 20], [50, 50]]], float)  # (K=2, f=3, 2)
    vis = np.array([[True, True, False], [True, True, False]])
    c = agreement_counts(masks, masks.reshape(3, -1).any(1), tracks, vis)
    assert (c.inside, c.claimed, c.agree, c.frames) == (3, 4, 3, 3)  # point 2 is off the mask on frame 0
    assert c.signal() == pytest.approx(0.75)
    vis[:, 2] = True  # the points claim an object the mask has lost
    c = agreement_counts(masks, masks.reshape(3, -1).any(1), tracks, vis)
    assert c.agree == 2 and c.signal() == pytest.approx(0.75 * 2 / 3)


@pytest.mark.slow
@pytest.mark.cluster_gpu
def test_the_sam3_recipe_runs_on_a_head_with_logical_gpus(tmp_path):
    pytest.importorskip("cotracker", reason="the Makefile installs it from ../shared/third_party/co-tracker")
    from pipelines.synth import main as synth_main

    made = subprocess.run([sys.executable, "-m", "pipelines.weights", "random", "--size", "tiny", "--recipe", "sam3",
                           "--out", str(tmp_path / "w")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    overrides = [ln for ln in made.stdout.splitlines() if "=" in ln]
    assert synth_main(["--n", "4", "--seed", "5", "--out", str(tmp_path / "clips"), "--width", "128", "--height",
                       "96", "--frames", "24"]) == 0
    head = start_head(num_cpus=4, num_gpus=2, dashboard=False)
    runs = {}
    try:
        for family, folder in VIDEO_DIRS.items():  # the recipe's sam2_video, then the other two on the same head
            out = runs[family] = tmp_path / f"run-{family}"
            done = subprocess.run(
                [sys.executable, "-m", "pipelines.annotate", "--config",
                 str(REPO / "configs" / "annotate" / "sam3.yaml"), f"input={tmp_path / 'clips' / 'manifest.jsonl'}",
                 f"out={out}", f"ray_address={head.gcs_address}", "progress=false", "rows_per_shard=2",
                 "batch_size=2", "gpu_workers=2", "decode_threads=2", "actor_memory_gb=1", "ground.box_threshold=0",
                 "track.interp_shape=[96,128]", "features.batch_size=8", *overrides,
                 f"confidence.propagation={family}", f"confidence.weights={tmp_path / 'w' / folder}"],
                cwd=REPO, env=head.env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-5000:]
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    for family, out in runs.items():
        stats = json.loads((out / "stats.json").read_text())
        assert stats["plan"]["actors"] == 2 and stats["plan"]["gpus_per_actor"] == 1.0
        assert stats["written"] + stats["rejected"] == stats["input_rows"] == 4 and stats["written"] >= 1
        for tar in sorted((out / "shards").glob("pite-*.tar")):
            for sample in iter_samples(tar):
                backends = sample.meta["provenance"]["backends"]
                assert backends["ground"].startswith("sam3/") and backends["propagate"].startswith(f"{family}/mask/")
                assert backends["segment"].startswith("auto/") and "cotracker" in backends["track"]
                assert all("mask_agreement" in o["confidence_signals"] for o in sample.meta["objects"])


def test_real_size_processors_have_the_published_input_sizes():
    from pipelines.weights_sam3 import video_processor

    sides = {f: (video_processor(f, "real").image_processor.size.height,
                 video_processor(f, "real").video_processor.size.height) for f in VIDEO_DIRS}
    assert sides == {"sam2_video": (1024, 1024), "edgetam_video": (1024, 1024), "sam3_tracker": (1008, 1008)}


def test_kept_propagated_outlines_are_valid_and_drawn(weights, clips, tmp_path):
    from annotate.schema import validate_sample
    from pipelines.viz import draw_tracks

    cfg = sam3_cfg(weights, "edgetam_video", outlines=True)
    item = annotate(cfg, clips)[0]
    assert item.ok, item.error
    sample = assemble(item, cfg)
    validate_sample(sample)
    per_frame = [o["propagated_outline"] for o in sample.meta["objects"]]
    assert all(len(p) == cfg.num_frames for p in per_frame) and any(any(p) for p in per_frame)
    frames = np.zeros((cfg.num_frames, 48, 64, 3), np.uint8)
    plain = draw_tracks(frames, sample.traj.astype(np.float32), sample.vis)
    drawn = draw_tracks(frames, sample.traj.astype(np.float32), sample.vis, outlines=per_frame)
    t = next(t for t in range(cfg.num_frames) if any(p[t] for p in per_frame))
    assert (drawn[t] != plain[t]).any()
