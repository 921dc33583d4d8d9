"""`pite weights random`: tiny random weights for every production backend, read back by the production recipe
(configs/annotate/pite143k.yaml) through the stages' own loaders; SAM's `model_type: auto` size reader."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.item import ClipItem, Grounding, Phrase
from annotate.pipeline import build_stage
from annotate.segment.sam_build import PUBLISHED, arch_from_state, describe
from annotate.segment import SamSegmenter, load_sam, sam_host_memory_gb
from annotate.clip import DecodedClip, VideoInfo
from pipelines.annotate.config import AnnotateJobConfig
from pipelines.cli import main as pite
from pipelines.config import load_config
from pipelines.weights import bert_vocab
from pipelines.weights import main as weights_main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "annotate" / "pite143k.yaml"
# The recipe is for GPUs in half precision; these tests run it on the CPU in float32.
CPU = ["ground.device=cpu", "segment.device=cpu", "track.device=cpu", "features.device=cpu",
       "ground.dtype=float32", "features.dtype=float32"]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = weights_main(argv)
    return rc, out.getvalue(), err.getvalue()


def parse_overrides(stdout: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in stdout.strip().splitlines()]
    assert all(len(p) == 2 for p in pairs), stdout
    return dict(pairs)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def has_cotracker() -> bool:
    try:
        import cotracker.predictor  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`pite weights random --size tiny` once for the module: (out dir, {key: value} of its printed overrides)."""
    out = tmp_path_factory.mktemp("weights") / "tiny"
    rc, stdout, stderr = run_main(["random", "--size", "tiny", "--out", str(out)])
    assert rc == 0, stderr
    return out, parse_overrides(stdout)


def recipe(overrides: dict[str, str], *extra: str) -> AnnotateJobConfig:
    return load_config(AnnotateJobConfig, RECIPE, [f"{k}={v}" for k, v in overrides.items()] + CPU + list(extra))


def clip_item(frames: np.ndarray, caption: str, phrases: list[str]) -> ClipItem:
    """An item whose decoded clip is `frames` (every frame a sample and a tracking frame), with its phrases."""
    n, h, w = frames.shape[:3]
    idx = np.arange(n)
    info = VideoInfo(path="gen.mp4", width=w, height=h, fps=10.0, num_frames=n, duration=n / 10.0)
    clip = DecodedClip(info=info, scale=1.0, sample_indices=idx, sample_times=idx / 10.0, sample_frames=frames,
                       track_indices=idx, track_times=idx / 10.0, track_frames=frames)
    item = ClipItem(row=0, video_id="gen", video="gen.mp4", caption=caption, clip=clip)
    at = 0
    for text in phrases:
        start = caption.index(text, at)
        item.phrases.append(Phrase(text, start, start + len(text)))
        at = start + len(text)
    return item


def textured_frames(n: int = 6, seed: int = 0) -> np.ndarray:
    """48x64 frames of 4x4 blocks of noise: structure for the backbones to see, cheap for every model."""
    base = np.random.default_rng(seed).integers(0, 256, (n, 12, 16, 3), dtype=np.uint8)
    return base.repeat(4, axis=1).repeat(4, axis=2)


# --- the command ------------------------------------------------------------------------------------------------


def test_tiny_writes_every_backend_and_prints_its_overrides(tiny):
    out, overrides = tiny
    want = {"ground.weights": out / "grounding-dino", "segment.weights": out / "sam_tiny.pth",
            "features.weights": out / "clip-vit-large-patch14"}
    if has_cotracker():
        want["track.weights"] = out / "cotracker3_offline.pth"
    assert {k: v for k, v in overrides.items() if k != "segment.model_type"} == {k: str(v) for k, v in want.items()}
    assert overrides["segment.model_type"] == "auto"
    for path in want.values():
        assert path.exists() and Path(str(path)).is_absolute()
    gdino = {p.name for p in (out / "grounding-dino").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= gdino  # a fast tokenizer's files
    clip = {p.name for p in (out / "clip-vit-large-patch14").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= clip
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]  # staged writes all moved into place


def test_vocab_keeps_the_ids_grounding_dino_hard_codes():
    for size, length in (("tiny", None), ("real", 30522)):
        vocab = bert_vocab(size)
        assert [vocab[i] for i in (0, 100, 101, 102, 103, 1012, 1029)] == \
               ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"]
        assert len(vocab) == len(set(vocab)) and (length is None or len(vocab) == length)


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        ["random", "--size", "huge", "--out", str(tmp_path)],
        ["random", "--size", "tiny", "--sam-type", "vit_b", "--out", str(tmp_path)],
        ["random", "--size", "tiny"],
        ["download", "--size", "tiny", "--out", str(tmp_path)],
        [],
    ]
    for argv in cases:
        rc, stdout, stderr = run_main(argv)
        assert rc == 2 and stdout == "", argv
        assert stderr.startswith("pite weights: ") and stderr.count("\n") == 1, (argv, stderr)
    (tmp_path / "file").write_text("")
    assert pite(["weights", "random", "--size", "tiny", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pite weights: ") and err.count("\n") == 1


@pytest.mark.slow
def test_module_entry_point_writes_the_same_bytes_for_the_same_seed(tiny, tmp_path):
    out, overrides = tiny
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, "-m", "pipelines.weights", "random", "--size", "tiny", "--out",
                           str(again)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert parse_overrides(proc.stdout) == {k: v.replace(str(out), str(again)) for k, v in overrides.items()}
    assert digests(again) == digests(out)


def test_another_seed_gives_other_weights(tiny, tmp_path):
    out, _ = tiny
    rc, _, stderr = run_main(["random", "--size", "tiny", "--seed", "1", "--out", str(tmp_path)])
    assert rc == 0, stderr
    ours, theirs = digests(out), digests(tmp_path)
    assert ours.keys() == theirs.keys()
    for name in ("sam_tiny.pth", "grounding-dino/model.safetensors", "clip-vit-large-patch14/model.safetensors"):
        assert ours[name] != theirs[name]
    assert ours["grounding-dino/vocab.txt"] == theirs["grounding-dino/vocab.txt"]


# --- the production recipe on them ------------------------------------------------------------------------------


def test_recipe_stages_load_the_weights_and_run_a_clip(tiny):
    _, overrides = tiny
    # Random weights score nothing reliably: thresholds 0 make every phrase a box, so the later stages get work.
    cfg = recipe(overrides, "ground.box_threshold=0", "ground.text_threshold=0")
    assert (cfg.ground.backend, cfg.segment.backend, cfg.features.backend) == ("groundingdino", "sam", "clip")
    item = clip_item(textured_frames(), "A red ball near a dog.", ["A red ball", "a dog"])
    for name in ("ground", "segment", "points", "features"):
        stage = build_stage(name, cfg)
        stage.ready()
        stage.process([item])
        assert item.ok, (name, item.error)
    assert [g.phrase_index for g in item.groundings] + [d["phrase"] for d in item.dropped] != []
    assert len(item.masks) == len(item.groundings) and all(m.shape == (48, 64) for m in item.masks)
    assert item.feat.shape == (6, 768) and np.isfinite(item.feat).all()
    assert item.versions["ground"].startswith("groundingdino/")
    assert item.versions["segment"].startswith("sam auto=vit e16 d2 h2 img64/8 ")
    assert item.versions["features"].startswith("clip clip-vit-large-patch14 image_embeds")


def test_cotracker_checkpoint_loads_through_the_track_stage(tiny):
    pytest.importorskip("cotracker")
    _, overrides = tiny
    stage = build_stage("track", recipe(overrides))
    assert stage.cfg.track.backend == "cotracker"
    stage.setup()  # CoTrackerPredictor(checkpoint=...): a strict load_state_dict of the file
    saved = torch.load(overrides["track.weights"], map_location="cpu", weights_only=True)
    loaded = stage.predictor.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # A CoTracker forward on the CPU takes about a minute here (it works at 384x512 whatever the input), so the
    # tracking itself is left to test_track's slow tests of the real package.


# --- SAM: model_type auto ---------------------------------------------------------------------------------------


def hand_built_sam():
    """A small Sam made directly from segment-anything's classes, sized unlike the CLI's tiny one: 32 px, 4 px
    patches, 3 heads, global blocks 0 and 2 between 4x4 windows, mlp ratio 2.5, a 2-layer mask decoder."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(3)
    encoder = ImageEncoderViT(img_size=32, patch_size=4, embed_dim=24, depth=3, num_heads=3, mlp_ratio=2.5,
                              out_chans=16, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              global_attn_indexes=(0, 2), window_size=4)
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(32, 32), mask_in_chans=8)
    decoder = MaskDecoder(transformer_dim=16, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=12,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=16, mlp_dim=24, num_heads=8))
    sam = Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name:  # zero at init: fill them, so a wrong window or head count would show
                p.normal_(0.0, 0.5)
    return sam


def sam_cfg(weights: str, model_type: str = "auto") -> AnnotateConfig:
    cfg = AnnotateConfig()
    cfg.segment.backend, cfg.segment.weights, cfg.segment.model_type = "sam", weights, model_type
    cfg.segment.device = "cpu"
    return cfg


def test_auto_reads_the_size_off_the_checkpoint_and_gives_the_same_masks(tmp_path):
    sam = hand_built_sam()
    path = tmp_path / "sam_small.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_sam("auto", str(path))
    assert describe(arch_from_state(loaded.state_dict())) == "vit e24 d3 h3 img32/4"
    assert loaded.image_encoder.blocks[1].window_size == 4 and loaded.image_encoder.blocks[2].window_size == 0

    frames = textured_frames(2, seed=5)
    boxes = [(0, [4, 4, 40, 30]), (1, [20, 10, 60, 44]), (1, [0, 0, 64, 48])]

    def masks(stage):
        item = clip_item(frames, "", [])
        for i, (t, box) in enumerate(boxes):
            item.phrases.append(Phrase(f"object {i}", 0, 1))
            item.groundings.append(Grounding(phrase_index=i, track_frame=t, source_frame=t, box=np.array(box, float)))
        stage.process([item])
        assert item.ok, item.error
        return item.masks, [d["reason"] for d in item.dropped]

    want = masks(SamSegmenter.from_model(sam_cfg(str(path)), sam))
    got = masks(SamSegmenter(sam_cfg(str(path))))
    assert len(got[0]) == len(want[0]) and got[1] == want[1]
    for a, b in zip(got[0], want[0]):
        np.testing.assert_array_equal(a, b)


def test_auto_names_the_published_sizes():
    from segment_anything import sam_model_registry

    for name, arch in PUBLISHED.items():
        with torch.device("meta"):  # shapes only: no memory, no init time
            state = sam_model_registry[name](checkpoint=None).state_dict()
        assert arch_from_state(state) == arch and describe(arch) == name


def test_explicit_model_type_must_fit_the_checkpoint(tiny):
    _, overrides = tiny
    with pytest.raises(ConfigError) as info:
        load_sam("vit_b", overrides["segment.weights"])
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"segment.weights: {overrides['segment.weights']} does not fit segment.model_type=vit_b")
    assert msg.endswith("(it holds a vit e16 d2 h2 img64/8: set segment.model_type=auto)")


def test_auto_refuses_what_it_cannot_read(tmp_path):
    from segment_anything.modeling import ImageEncoderViT

    no_rel_pos = {f"image_encoder.{k}": v for k, v in ImageEncoderViT(
        img_size=32, patch_size=8, embed_dim=8, depth=1, num_heads=2, out_chans=8).state_dict().items()}
    for name, state in (("norelpos.pth", no_rel_pos), ("other.pth", {"weight": torch.zeros(2)})):
        torch.save(state, tmp_path / name)
        with pytest.raises(ConfigError, match=r"^segment\.weights: cannot read a SAM architecture off .*auto") as info:
            load_sam("auto", str(tmp_path / name))
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^segment\.model_type: 'vit_x' .*vit_h \| auto\)"):
        load_sam("vit_x", None)


def test_auto_memory_hint_follows_the_checkpoint_size(tiny):
    _, overrides = tiny
    assert sam_host_memory_gb("vit_h", None) == 5.0
    assert sam_host_memory_gb("auto", overrides["segment.weights"]) == 1.0  # a 0.2 MB file: the 1 GB floor
    assert sam_host_memory_gb("auto", None) == 5.0  # unknown: as much as the largest
    stage = SamSegmenter(sam_cfg(overrides["segment.weights"]))
    assert stage.resources().memory_gb == 1.0
    assert stage.version().startswith("sam auto ")


@pytest.mark.slow
def test_the_laptop_recipe_annotates_a_clip_with_them(tiny, tmp_path, capsys):
    """configs/annotate/cpu.yaml's plumbing: `pite annotate-clip` with the tiny weights on a generated video."""
    from annotate.synthetic import encode_mp4

    _, overrides = tiny
    video = tmp_path / "mine.mp4"
    frames = np.repeat(textured_frames(n=20, seed=3), 1, axis=0)
    video.write_bytes(encode_mp4(frames, 10.0))
    extra = [f"{k}={v}" for k, v in overrides.items()] + ["ground.box_threshold=0", "ground.text_threshold=0"]
    if "track.weights" not in overrides:  # CoTracker3 is not installed here: the weightless tracker
        extra.append("track.backend=lk")
    rc = pite(["annotate-clip", "--config", str(ROOT / "configs" / "annotate" / "cpu.yaml"), "--video", str(video),
               "--caption", "A red ball rolls past a dog.", "--out", str(tmp_path / "out"), *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert (tmp_path / "out" / "annotate-clip.json").is_file() and "mine:" in out.out
