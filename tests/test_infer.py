"""`pite infer` and the root inference.py on a generated clip with a tiny model trained (a few seconds) to say
"A red ball is moving past a blue box." and to regress both objects' trajectories at the phrases' last tokens.

The check is end to end: the answer's noun phrases (spaCy) each get a trajectory, and that trajectory is the
trained one of the right object (so the token alignment between training labels and inference readout holds).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate.config import FeaturesConfig
from annotate.errors import ConfigError
from annotate.schema import build_sample
from annotate.synthetic import encode_mp4
from model.batch import collate
from model.checkpoint import save_checkpoint
from model.config import LabelConfig, LoraSettings, PiteConfig
from model.conversation import get_template
from model.factory import TinyLlamaSettings, build_tiny
from model.labels import build_examples
from pipelines.cli import main as cli_main
from pipelines.infer import Predictor, last_token

CAPTION = "A red ball is moving past a blue box."
QUERY = "Describe the video in detail."  # LabelConfig's first caption query: what the model was trained on
W, H, N = 64, 48, 40
T = 32  # frames per clip (100 in real checkpoints; fewer keeps the test fast)
REPO = Path(__file__).resolve().parents[1]


def make_video(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A red square moving right and a blue one moving down; returns their centres (N, 2) in pixels."""
    frames = np.full((N, H, W, 3), 40, np.uint8)
    ball, box = [], []
    for i in range(N):
        bx, by, qx, qy = 8 + i, 12, 44, int(6 + 0.8 * i)
        frames[i, by - 4:by + 4, bx - 4:bx + 4] = (220, 30, 30)
        frames[i, qy - 4:qy + 4, qx - 4:qx + 4] = (30, 30, 220)
        ball.append((bx, by))
        box.append((qx, qy))
    path.write_bytes(encode_mp4(frames, 10.0))
    return np.array(ball, float), np.array(box, float)


def train_tiny_checkpoint(out: Path, steps: int = 150, seed: int = 0):
    """(checkpoint dir, video, target trajectories (2, 3, T, 2), sample): a tiny model overfit on one clip."""
    out.mkdir(parents=True, exist_ok=True)
    video = out / "clip.mp4"
    ball, box = make_video(video)
    cfg = PiteConfig(n_frames=T, n_points=3, lora=LoraSettings(enabled=False))
    # The answer follows "ASSISTANT: ", so the tokenizer must see the caption after a space too (else " A" splits
    # into a bare space token, which labels.py leaves unsupervised: see the report).
    model, tok = build_tiny([CAPTION, " " + CAPTION] * 4 + [QUERY], cfg, TinyLlamaSettings(vocab_size=400), seed=seed)
    template = get_template("pite")
    predictor = Predictor(model, tok, template, FeaturesConfig())
    clip = predictor.decode(video)
    feat = predictor.encode_frames(clip.sample_frames)
    idx = clip.sample_indices
    offsets = np.array([[0, 0], [0.03, 0], [0, 0.03]])
    traj = np.stack([(c[idx] / [W, H])[None] + offsets[:, None] for c in (ball, box)]).astype(np.float32)
    objects = []
    for phrase in ("A red ball", "a blue box"):
        s = CAPTION.index(phrase)
        objects.append({"phrase": phrase, "char_span": [s, s + len(phrase)], "frame": 0, "source_frame": 0,
                        "box": [0, 0, 0.1, 0.1], "score": 1.0, "mask_area": 1})
    sample = build_sample(video_id="clip", caption=CAPTION, width=W, height=H, fps=10.0, duration=N / 10,
                          frame_indices=idx, frame_times=clip.sample_times, objects=objects, traj=traj,
                          vis=np.ones(traj.shape[:3], bool), feat=feat)
    examples, _ = build_examples(sample, tok, template, model.video_token_id, LabelConfig(stage=2))
    batch = collate(examples, tok.pad_token_id)
    model.set_trainable(llm=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=4e-3)
    torch.manual_seed(seed)
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = save_checkpoint(model, tok, out / "ckpt", template)
    return ckpt, video, sample.traj.astype(np.float32), sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("infer"))


@pytest.mark.slow
def test_infer_json_gives_each_noun_phrase_its_trained_trajectory(trained, tmp_path):
    ckpt, video, target, _ = trained
    out_json, out_png = tmp_path / "pred.json", tmp_path / "traj.png"
    rc = cli_main(["infer", "--checkpoint", str(ckpt), "--video", str(video), "--query", QUERY,
                   "--json", str(out_json), "--trajectories", str(out_png), "--max-new-tokens", "40"])
    assert rc == 0
    pred = json.loads(out_json.read_text())
    assert pred["answer"] == CAPTION
    # Every noun phrase of the answer (spaCy, independently) has a trajectory.
    from annotate.nouns import extract_phrases, load_spacy

    chunks = [p.text for p in extract_phrases(load_spacy("en_core_web_sm"), [pred["answer"]])[0]]
    assert [p["phrase"] for p in pred["phrases"]] == chunks == ["A red ball", "a blue box"]
    for i, p in enumerate(pred["phrases"]):
        s, e = p["char_span"]
        assert pred["answer"][s:e] == p["phrase"]
        assert p["token_span"][0] < p["token_span"][1] == p["token_index"] + 1
        traj = np.asarray(p["trajectory"])
        assert traj.shape == (3, T, 2)
        own, other = np.abs(traj - target[i]).mean(), np.abs(traj - target[1 - i]).mean()
        assert own < 0.05 < other, (p["phrase"], own, other)
    assert len(pred["frame_indices"]) == T
    import cv2

    assert cv2.imread(str(out_png)) is not None


@pytest.mark.slow
def test_root_inference_py_keeps_the_released_command_line(trained):
    ckpt, video, _, _ = trained
    res = subprocess.run([sys.executable, "inference.py", "--video_path", str(video), "--query", QUERY,
                          "--checkpoint", str(ckpt), "--temperature", "0", "--max_new_tokens", "40"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == CAPTION


def test_last_token_is_the_one_covering_the_last_non_space_character():
    text = "a red ball rolls"
    spans = [(0, 1), (1, 5), (5, 10), (10, 16)]  # "a", " red", " ball", " rolls"
    assert last_token(spans, 0, 10, text) == 2
    assert last_token(spans, 0, 11, text) == 2  # a trailing space does not move it
    assert last_token(spans, 2, 5, text) == 1
    assert last_token([], 0, 3, "abc") is None


def test_clip_checkpoint_needs_clip_path():
    from pipelines.infer import features_for

    with pytest.raises(ConfigError, match="--clip_path"):
        features_for("clip", "center", None, "cpu")
    assert features_for("thumbnail", "center", None, "cpu").backend == "thumbnail"


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    rc = cli_main(["infer", "--checkpoint", str(tmp_path), "--video", "x.mp4", "--query", "q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pite.json" in err and err.count("\n") == 1
