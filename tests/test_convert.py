"""`pite convert vtimellm`: VTimeLLM-format records -> PiTe shards and back, with VTimeLLM's timestamp rule."""

import json

import numpy as np
import pytest

from model.config import LabelConfig
from model.conversation import get_template
from model.labels import IGNORE_INDEX, build_examples
from model.tokenizer import train_tokenizer
from pipelines import convert
from pipelines.cli import main as cli_main
from pipelines.shards import iter_samples, open_index, open_rejects, shard_paths

# docs/data.md's example: 100 frames, tokens at 0, 9.4, 49.4, 53.2 s of a 54.2 s clip -> 00, 17, 91, 98.
INTERNVID = {
    "source": "internvid", "id": "3n3oCNerzV0",
    "conversations": [
        {"from": "human", "value": "<video>\nI'd appreciate it if you could provide a detailed account of the "
                                   "events that occurred at different timestamps in the video."},
        {"from": "gpt", "value": "From <s0> to <e0>, woman is counting money with a pen on a white table. "
                                 "From <s1> to <e1>, two people shaking hands in front of a desk."}],
    "meta": {"split": [129.8, 184.0], "duration": 54.2, "token": {"<s0>": 0, "<e0>": 9.4, "<s1>": 49.4, "<e1>": 53.2}},
}
EXPECTED_ANSWER = ("From 00 to 17, woman is counting money with a pen on a white table. "
                   "From 91 to 98, two people shaking hands in front of a desk.")
CHATGPT = {"source": "videochatgpt", "id": "v_abc",
           "conversations": [{"from": "human", "value": "What is the man doing?\n<video>"},
                             {"from": "gpt", "value": "He is cooking."}]}
IMAGE = {"id": "img1", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                         {"from": "gpt", "value": "A cat."}]}


@pytest.fixture
def data(tmp_path):
    feats = tmp_path / "feat"
    feats.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"3n3oCNerzV0": rng.normal(size=(100, 768)).astype(np.float16),
              "v_abc": rng.normal(size=(100, 768)).astype(np.float16),
              "img1": rng.normal(size=(768,)).astype(np.float16)}
    for k, v in arrays.items():
        np.save(feats / f"{k}.npy", v)
    bad_token = {"id": "v_abc", "conversations": [{"from": "human", "value": "<video>\nWhen?"},
                                                   {"from": "gpt", "value": "From <s0> to <e3>."}],
                 "meta": {"duration": 10.0, "token": {"<s0>": 1.0}}}
    no_feat = {"id": "missing", "conversations": [{"from": "human", "value": "<video>\nx"}, {"from": "gpt", "value": "y"}]}
    records = [INTERNVID, CHATGPT, IMAGE, bad_token, no_feat, CHATGPT]
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path, records, arrays


def test_vtimellm_timestamps():
    assert [convert.vtimellm_timestamp(t, 54.2) for t in (0, 9.4, 49.4, 53.2, 54.2)] == ["00", "17", "91", "98", "99"]


def test_convert_round_trip(data):
    root, records, arrays = data
    out = root / "run"
    assert cli_main(["convert", "vtimellm", "--json", str(root / "data.json"), "--features", str(root / "feat"),
                     "--out", str(out), "--rows-per-shard", "4", "--no-progress"]) == 0
    samples = [s for i in (0, 1) for s in iter_samples(shard_paths(out, i)["tar"])]
    assert [s.meta["video_id"] for s in samples] == ["3n3oCNerzV0", "v_abc", "img1", "v_abc#2"]
    rejects = open_rejects(out).to_table().to_pylist()
    assert sorted((r["row"], r["video_id"]) for r in rejects) == [(3, "v_abc#1"), (4, "missing")]
    assert any("<e3> has no value" in r["error"] for r in rejects)
    assert any("no features" in r["error"] for r in rejects)
    assert open_index(out).count_rows() == 4
    assert json.loads((out / "stats.json").read_text())["written"] == 4

    internvid, chat, image, chat2 = samples
    assert internvid.meta["conversations"][1]["value"] == EXPECTED_ANSWER
    assert internvid.meta["conversations"][0] == INTERNVID["conversations"][0]
    assert internvid.traj.shape == (0, 3, 100, 2) and internvid.meta["objects"] == []
    np.testing.assert_array_equal(internvid.feat, arrays["3n3oCNerzV0"])
    assert internvid.meta["duration"] == 54.2 and internvid.meta["fps"] == pytest.approx(100 / 54.2)
    assert image.feat.shape == (1, 768) and image.meta["provenance"]["image"] is True
    assert chat.meta["conversations"] == CHATGPT["conversations"] and chat.meta["duration"] == 0.0

    # Back to VTimeLLM's layout: same id, source, split and duration; timestamps as frame indices.
    back = convert.sample_to_record(internvid)
    assert back["id"] == INTERNVID["id"] and back["source"] == "internvid"
    assert back["meta"] == {"duration": 54.2, "split": [129.8, 184.0]}
    assert back["conversations"][1]["value"] == EXPECTED_ANSWER
    assert convert.sample_to_record(chat) == CHATGPT
    # Converting the exported record again gives the same sample (nothing left to replace).
    again = convert.record_to_sample(back, root / "feat")
    assert again.meta["conversations"] == internvid.meta["conversations"]

    # The converted sample trains: stage-3 labels cover exactly the answers (timestamps as frame indices).
    tok = train_tokenizer([EXPECTED_ANSWER, "He is cooking.", "What is the man doing?"], vocab_size=400)
    template = get_template("pite")
    [ex], dropped = build_examples(internvid, tok, template, tok.convert_tokens_to_ids("<video>"), LabelConfig(stage=3))
    labelled = tok.decode([t for t in ex.labels.tolist() if t != IGNORE_INDEX])
    assert labelled.strip() == EXPECTED_ANSWER + "</s>"
    assert ex.video.shape == (100, 768) and len(ex.head_pos) == 0
    [ex2], _ = build_examples(chat, tok, template, tok.convert_tokens_to_ids("<video>"), LabelConfig(stage=3))
    assert tok.decode([t for t in ex2.labels.tolist() if t != IGNORE_INDEX]).strip() == "He is cooking.</s>"


def test_convert_resume_keeps_done_shards(data):
    root, *_ = data
    out = root / "run"
    convert.convert_vtimellm(root / "data.json", root / "feat", out, rows_per_shard=4, progress=False)
    tar = shard_paths(out, 0)["tar"]
    mtime = tar.stat().st_mtime_ns
    stats = convert.convert_vtimellm(root / "data.json", root / "feat", out, rows_per_shard=4, progress=False)
    assert tar.stat().st_mtime_ns == mtime and stats["written"] == 4


def test_convert_bad_input_is_one_line_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "feat").mkdir()
    assert convert.main(["vtimellm", "--json", str(tmp_path / "x.json"), "--features", str(tmp_path / "feat"),
                         "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.json is not valid JSON" in err and err.count("\n") == 1
