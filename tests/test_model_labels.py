"""Conversation template, VTimeLLM timestamps and label alignment (the phrase -> last-token rule)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from annotate.errors import ConfigError, SchemaError
from model.config import LabelConfig
from model.conversation import (
    TEMPLATES,
    VICUNA_SYSTEM,
    format_span,
    frame_index,
    parse_span,
    render,
)
from model.conversation import Rendered
from model.encoding import IGNORE_INDEX, encode_conversation, encode_prompt
from model.labels import build_examples
from model.tokenizer import prepare_tokenizer, train_tokenizer

CAPTIONS = [
    "the red ball and the red cube",
    "A dog, a cat... and (the box)!",
    "le café 🐶 über-cute and the piñata",
    "a man rolls the ball to the left",
]
T, K = 6, 3


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return train_tokenizer(CAPTIONS * 3, vocab_size=400)


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A tiny sentencepiece BPE with byte fallback (LLaMA's kind), trained here."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("sp")
    texts = CAPTIONS * 5 + [VICUNA_SYSTEM, "USER: ASSISTANT: This is a video with 100 frames:"] * 5
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(out / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True, minloglevel=2,
    )
    return out


@pytest.fixture(scope="module")
def sp_fast(sp_dir):
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(sp_dir), legacy=True, add_bos_token=True)
    prepare_tokenizer(tok)
    return tok


def _sample(caption, spans, frames=None, n_frames=T, seed=0, **meta):
    rng = np.random.default_rng(seed)
    n = len(spans)
    objects = [{"phrase": caption[s:e], "char_span": [s, e], "frame": (frames or [0] * n)[i]}
               for i, (s, e) in enumerate(spans)]
    return {
        "meta": {"video_id": "clip-1", "caption": caption, "duration": 10.0, "objects": objects, **meta},
        "traj": rng.random((n, K, n_frames, 2)).astype(np.float16),
        "vis": np.ones((n, K, n_frames), dtype=bool),
        "feat": rng.random((n_frames, 768)).astype(np.float16),
    }


def _spans(caption, *phrases):
    """Char spans of phrases, each searched after the previous one (so repeated words get distinct spans)."""
    out, at = [], 0
    for p in phrases:
        s = caption.index(p, at)
        out.append((s, s + len(p)))
        at = s + 1
    return out


def _expanded_text(tok, ex):
    """The text the example's ids stand for: decode without skipping specials (<s>, T x <video>, </s>)."""
    return tok.decode(ex.input_ids.tolist())


# ---- template and timestamps ------------------------------------------------------------------------------------


def test_vicuna_v1_render_and_answer_spans():
    tpl = TEMPLATES["pite"]
    r = render(tpl, [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")])
    assert r.text == VICUNA_SYSTEM + " USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    assert [r.text[s:e] for s, e in r.answer_spans] == [" a1</s>", " a2</s>"]  # leading space: generation prompts end at "ASSISTANT:"
    assert [r.text[s:e] for s, e in r.message_spans] == ["q1", "a1", "q2", "a2"]
    gen = render(tpl, [("user", "q")], add_generation_prompt=True)
    assert gen.text.endswith(" USER: q ASSISTANT:")
    with pytest.raises(ValueError):
        render(tpl, [("assistant", "a")])


def test_prompts_ours_vs_release():
    assert TEMPLATES["pite"].video_prompt.format(query="Q") == "This is a video with 100 frames: <video>\nQ"
    assert TEMPLATES["release"].video_prompt.format(query="Q") == "<video>\nQ"


@pytest.mark.parametrize("t, duration, expected", [(0.0, 10, 0), (1.2, 10, 12), (4.0, 10, 40), (9.96, 10, 99),
                                                   (10.0, 10, 99), (12.0, 10, 99), (-1.0, 10, 0), (0.125, 1, 12)])
def test_frame_index_vtimellm(t, duration, expected):
    assert frame_index(t, duration) == expected


def test_format_and_parse_span():
    assert format_span(12, 40) == "From 12 to 40."
    assert format_span(0, 7) == "From 00 to 07."
    assert parse_span("It happens from 03 and 45 I think") == (3, 45)
    assert parse_span("From 12 to 40.") == (12, 40)
    assert parse_span("somewhere in the middle") is None


# ---- fast vs slow tokenizer ---------------------------------------------------------------------------------------


def test_fast_tokenizer_ids_equal_slow(sp_dir, sp_fast):
    """transformers 5 dropped the slow LlamaTokenizer (LlamaTokenizer *is* the fast one); its remaining slow path
    is the sentencepiece-backed SentencePieceBackend. With legacy=True (the behaviour LLaVA/PiTe trained with)
    both give the same ids for whole conversations, special tokens, emoji and byte fallback included."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    slow = SentencePieceBackend(vocab_file=str(sp_dir / "tokenizer.model"), bos_token="<s>", eos_token="</s>",
                                unk_token="<unk>", legacy=True)
    slow.add_tokens(["<video>"], special_tokens=True)
    assert sp_fast.is_fast and not slow.is_fast
    tpl = TEMPLATES["pite"]
    for caption in CAPTIONS:
        text = render(tpl, [("user", tpl.video_prompt.format(query="Describe the video.")), ("assistant", caption),
                            ("user", "During which frames can we see a dog?"), ("assistant", "From 12 to 40.")]).text
        fast_ids = sp_fast(text, add_special_tokens=False)["input_ids"]
        assert fast_ids == slow(text, add_special_tokens=False)["input_ids"], caption
        assert sp_fast(text)["input_ids"] == [sp_fast.bos_token_id] + fast_ids
        assert fast_ids.count(sp_fast.convert_tokens_to_ids("<video>")) == 1


# ---- label alignment ----------------------------------------------------------------------------------------------

ALIGNMENT_CASES = [
    ("the red ball and the red cube", ["the red ball", "the red cube"]),
    ("the red ball and the red cube", ["red", "red", "cube"]),  # a repeated word: two distinct tokens
    ("A dog, a cat... and (the box)!", ["A dog", "a cat", "the box"]),  # punctuation right after phrases
    ("le café 🐶 über-cute and the piñata", ["café 🐶", "über-cute", "the piñata"]),  # emoji ends a phrase
    # unseen emoji: several byte tokens share the character's offsets; the last of them completes it
    ("a giraffe 🦒 and a zebra 🦓", ["a giraffe 🦒", "a zebra 🦓"]),
]


@pytest.mark.parametrize("which", ["bpe", "sentencepiece"])
@pytest.mark.parametrize("caption, phrases", ALIGNMENT_CASES)
def test_phrase_supervised_at_its_last_token(which, caption, phrases, bpe_tokenizer, sp_fast):
    tok = bpe_tokenizer if which == "bpe" else sp_fast
    vid = tok.convert_tokens_to_ids("<video>")
    spans = _spans(caption, *phrases)
    exs, dropped = build_examples(_sample(caption, spans), tok, TEMPLATES["pite"], vid, LabelConfig(stage=2))
    (ex,) = exs
    assert ex.phrases == phrases and not dropped
    ids = ex.input_ids.tolist()
    full = _expanded_text(tok, ex)
    answer_at = full.index("ASSISTANT: ") + len("ASSISTANT: ")
    if which == "sentencepiece":  # its decoder drops the first leading space: re-find the caption
        answer_at = full.index(caption, answer_at - 1)
    for (s, e), q in zip(spans, ex.head_pos.tolist()):
        expected = full[: answer_at + e]  # everything up to the phrase's last character
        assert tok.decode(ids[: q + 1]).startswith(expected), (caption[s:e], tok.decode(ids[: q + 1])[-20:])
        assert not tok.decode(ids[:q]).startswith(expected), "an earlier token already completes the phrase"
    # repeated words land on different tokens
    assert len(set(ex.head_pos.tolist())) == len(phrases)


def test_trailing_space_in_span_and_leading_caption_space(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "  the ball rolls"
    sample = _sample(caption, [(2, 11)])  # "the ball " with its trailing space
    (ex,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))
    q = ex.head_pos.item()
    assert bpe_tokenizer.decode(ex.input_ids[: q + 1].tolist()).endswith("ASSISTANT: the ball")


def test_lm_labels_cover_answers_only(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball and the red cube"
    (ex,), _ = build_examples(_sample(caption, _spans(caption, "the red ball")), bpe_tokenizer, TEMPLATES["pite"],
                              vid, LabelConfig(stage=2))
    labelled = ex.labels != IGNORE_INDEX
    assert torch.equal(ex.labels[labelled], ex.input_ids[labelled])
    assert bpe_tokenizer.decode(ex.labels[labelled].tolist()).strip() == caption + "</s>"
    assert (ex.input_ids == vid).sum().item() == T
    assert (ex.labels[ex.input_ids == vid] == IGNORE_INDEX).all()
    assert ex.video.shape == (T, 768) and ex.video.dtype == torch.float32
    assert ex.traj_target.shape == (1, K, T, 2) and ex.traj_mask.all() and not ex.loc_mask.any()


def test_truncation_drops_cut_phrases_and_counts_them(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball and the red cube"
    sample = _sample(caption, _spans(caption, "the red ball", "the red cube"))
    (full,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))
    first, second = full.head_pos.tolist()
    cut = LabelConfig(stage=2, max_length=second)  # keeps the first phrase's token, cuts the second's
    (ex,), dropped = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, cut)
    assert ex.head_pos.tolist() == [first] and ex.phrases == ["the red ball"]
    assert dropped == {"truncated": 1}
    assert len(ex.input_ids) == second and ex.traj_target.shape[0] == 1
    # a limit that cuts into the video drops the example
    exs, dropped = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2, max_length=40))
    assert exs == [] and dropped["video truncated"] == 1


def test_stage1_one_frame_and_points_mean(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball and the red cube"
    sample = _sample(caption, _spans(caption, "the red ball", "the red cube"), frames=[2, 4])
    sample["vis"][0, 1, 2] = False  # the mean must skip the invisible point
    sample["vis"][1, :, 4] = False  # no visible point at its grounding frame: dropped
    exs, dropped = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=1))
    (ex,) = exs
    assert dropped == {"not visible": 1}
    assert ex.phrases == ["the red ball"] and ex.loc_mask.all() and not ex.traj_mask.any()
    expected = sample["traj"][0, [0, 2], 2].astype(np.float32).mean(axis=0)
    assert np.allclose(ex.loc_target[0].numpy(), expected)
    assert torch.equal(ex.video, torch.from_numpy(sample["feat"][2:3].astype(np.float32)))
    assert (ex.input_ids == vid).sum().item() == 1
    assert "This is an image: <video>" in bpe_tokenizer.decode(ex.input_ids.tolist())


def test_stage1_groups_phrases_by_grounding_frame(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball and the red cube"
    sample = _sample(caption, _spans(caption, "the red ball", "the red cube"), frames=[3, 1])
    exs, _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=1))
    assert [ex.phrases for ex in exs] == [["the red cube"], ["the red ball"]]  # frame 1 first, then frame 3


def test_stage1_random_frame_and_phrase_answers(bpe_tokenizer):
    """stage1_frames random: one frame drawn among those showing an object, its visible objects supervised there;
    stage1_text phrase: one example per object, answering with the phrase alone."""
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball and the red cube"
    sample = _sample(caption, _spans(caption, "the red ball", "the red cube"), frames=[0, 0])
    sample["vis"][:, :, :3] = False  # nothing visible before frame 3
    sample["vis"][1, :, 3:5] = False  # the cube only from frame 5
    labels = LabelConfig(stage=1, stage1_frames="random", stage1_text="phrase")
    seen = set()
    for seed in range(40):
        exs, _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, labels, rng=random.Random(seed))
        frame = next(f for f in range(T) if torch.equal(exs[0].video, torch.from_numpy(
            sample["feat"][f:f + 1].astype(np.float32))))
        seen.add(frame)
        assert frame >= 3
        assert [ex.phrases for ex in exs] == ([["the red ball"]] if frame < 5 else [["the red ball"], ["the red cube"]])
        for ex, i in zip(exs, range(2)):
            text = _expanded_text(bpe_tokenizer, ex)
            assert f"{ex.phrases[0]}." in text and caption not in text
            expected = sample["traj"][i, :, frame].astype(np.float32).mean(axis=0)
            assert np.allclose(ex.loc_target[0].numpy(), expected)
    assert seen == {3, 4, 5}  # frames are drawn, not fixed
    # without an rng (evaluation) the grounding frame is used, as with stage1_frames ground
    exs, _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, labels)
    assert exs == [] or all(torch.equal(ex.video, torch.from_numpy(sample["feat"][0:1].astype(np.float32)))
                            for ex in exs)
    with pytest.raises(ConfigError, match="stage1_text"):
        LabelConfig(stage1_text="words")


def test_stage3_events_give_vtimellm_timestamps(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "a man rolls the ball to the left"
    events = [{"start": 4.0, "end": 9.96, "text": "The ball stops."}, {"start": 1.2, "end": 4.0, "text": "a man rolls it"}]
    sample = _sample(caption, _spans(caption, "a man", "the ball"), events=events)
    (ex,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=3))
    text = bpe_tokenizer.decode(ex.input_ids.tolist())
    assert "ASSISTANT: From 12 to 40, a man rolls it. From 40 to 99, The ball stops.</s>" in text
    assert "USER: During which frames can we see a man rolls it? ASSISTANT: From 12 to 40.</s>" in text
    assert "USER: During which frames can we see The ball stops? ASSISTANT: From 40 to 99.</s>" in text
    assert ex.phrases == ["a man", "the ball"]  # the caption turn still carries the trajectories
    labelled = bpe_tokenizer.decode(ex.labels[ex.labels != IGNORE_INDEX].tolist())
    assert "From 12 to 40.</s>" in labelled and "During which" not in labelled
    # the first user turn alone carries the video prompt
    assert text.count("This is a video with 100 frames:") == 1


def test_stage3_shuffle_puts_every_question_first_and_keeps_phrase_targets(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "a man rolls the ball to the left"
    events = [{"start": 4.0, "end": 9.96, "text": "The ball stops."}, {"start": 1.2, "end": 4.0, "text": "a man rolls it"}]
    conversation = [{"from": "human", "value": "<video>\nWho rolls it?"}, {"from": "gpt", "value": "A man."},
                    {"from": "human", "value": "And then?"}, {"from": "gpt", "value": "It stops."}]
    sample = _sample(caption, _spans(caption, "a man", "the ball"), events=events, conversations=conversation)
    cfg = LabelConfig(stage=3, stage3_order="shuffle")
    firsts = set()
    for seed in range(24):
        (ex,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, cfg, random.Random(seed))
        text = _expanded_text(bpe_tokenizer, ex)
        first = text.split("<video>")[-1].split(" ASSISTANT:")[0].strip()
        firsts.add(first.split()[0])
        # one video prompt: the template's, or the converted conversation's own when it opens the example
        opened_by_conversation = first.startswith("Who rolls it?")
        assert text.count("This is a video with 100 frames:") == (0 if opened_by_conversation else 1)
        # the conversation's follow-up stays right after its first answer
        assert "Who rolls it? ASSISTANT: A man.</s>USER: And then? ASSISTANT: It stops.</s>" in text
        # the caption's phrases are still read at their own last tokens, wherever the caption turn landed
        ids = ex.input_ids.tolist()
        assert [bpe_tokenizer.decode(ids[q]).strip() for q in ex.head_pos.tolist()] == ["man", "ball"]
    assert {"Describe", "Could", "During", "Who"} <= firsts, firsts
    # "fixed" (the default) keeps the listed order, whatever the rng
    (ex,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=3), random.Random(3))
    first = _expanded_text(bpe_tokenizer, ex).split("<video>")[-1].split(" ASSISTANT:")[0].strip()
    assert first in LabelConfig().caption_queries
    with pytest.raises(ConfigError, match="stage3_order"):
        LabelConfig(stage=3, stage3_order="random")


def test_stage3_split_keeps_grounding_answers_away_from_the_dense_captions(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "a man rolls the ball to the left"
    events = [{"start": 4.0, "end": 9.96, "text": "The ball stops."}, {"start": 1.2, "end": 4.0, "text": "a man rolls it"}]
    sample = _sample(caption, _spans(caption, "a man", "the ball"), events=events)
    cfg = LabelConfig(stage=3, stage3_split=True, stage3_order="shuffle")
    dense, grounding = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, cfg, random.Random(0))[0]
    dense_text, grounding_text = _expanded_text(bpe_tokenizer, dense), _expanded_text(bpe_tokenizer, grounding)
    assert "From 12 to 40, a man rolls it." in dense_text and "During which" not in dense_text
    assert dense.phrases == ["a man", "the ball"] and dense.head_pos.numel() == 2  # the caption stays here
    assert "During which frames can we see a man rolls it? ASSISTANT: From 12 to 40.</s>" in grounding_text
    assert "During which frames can we see The ball stops? ASSISTANT: From 40 to 99.</s>" in grounding_text
    assert ", a man rolls it." not in grounding_text and "rolls the ball to the left" not in grounding_text
    assert grounding.head_pos.numel() == 0
    for ex in (dense, grounding):  # each its own conversation with the video
        assert _expanded_text(bpe_tokenizer, ex).count("This is a video with 100 frames:") == 1
    # one event still gives both: its dense caption, and its grounding question on its own
    one = _sample(caption, _spans(caption, "a man"), events=events[:1])
    assert len(build_examples(one, bpe_tokenizer, TEMPLATES["pite"], vid, cfg, random.Random(0))[0]) == 2


def test_stage3_conversations_without_objects(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    sample = _sample("ignored caption", [], conversations=[
        {"from": "human", "value": "<video>\nWhat happens from 10 to 20?"},
        {"from": "gpt", "value": "A dog jumps."},
    ])
    (ex,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=3))
    text = bpe_tokenizer.decode(ex.input_ids.tolist())
    # converted data keeps its own prompt ("<video>\n" + question, as VTimeLLM's), not wrapped in the template's
    assert "USER: " + "<video>" * T + "\nWhat happens from 10 to 20? ASSISTANT: A dog jumps.</s>" in text
    assert "This is a video" not in text
    assert ex.head_pos.numel() == 0
    assert build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))[0] == []


def test_bad_samples_raise_schema_errors(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball"
    bad = _sample(caption, [(0, 12)])
    bad["traj"] = bad["traj"][:, :, :, :1]
    with pytest.raises(SchemaError, match="clip-1"):
        build_examples(bad, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))
    sneaky = _sample("a <video> ball", [(10, 14)])
    with pytest.raises(SchemaError, match="reserved token"):
        build_examples(sneaky, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))


def test_encode_prompt_ends_with_assistant_and_expands_video(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    ids = encode_prompt(bpe_tokenizer, TEMPLATES["pite"], vid, "describe the video", 5)
    assert (ids == vid).sum().item() == 5
    assert bpe_tokenizer.decode(ids.tolist()).endswith("<video>\ndescribe the video ASSISTANT:")


def test_encode_conversation_requires_one_placeholder(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    r = Rendered("no placeholder here", [(0, 19)], [])
    with pytest.raises(SchemaError):
        encode_conversation(bpe_tokenizer, r, vid, 4, [], 100)


def test_schema_sample_through_its_shard_members(bpe_tokenizer):
    """An annotate.schema.Sample, written to shard members and read back, builds the same example as the dict."""
    from annotate.schema import Sample

    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "the red ball and the red cube"
    d = _sample(caption, _spans(caption, "the red ball", "the red cube"))
    sample = Sample.from_members(Sample(**d).to_members(), key="clip-1")
    (a,), _ = build_examples(d, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))
    (b,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, LabelConfig(stage=2))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.head_pos, b.head_pos)
    assert torch.equal(a.traj_target, b.traj_target) and torch.equal(a.video, b.video)


def test_stage3_grounding_only_keeps_just_the_grounding_questions(bpe_tokenizer):
    vid = bpe_tokenizer.convert_tokens_to_ids("<video>")
    caption = "a man rolls the ball to the left"
    events = [{"start": 4.0, "end": 9.96, "text": "The ball stops."}, {"start": 1.2, "end": 4.0, "text": "a man rolls it"}]
    sample = _sample(caption, _spans(caption, "a man", "the ball"), events=events)
    cfg = LabelConfig(stage=3, stage3_grounding_only=True, max_grounding_turns=1)
    (ex,), _ = build_examples(sample, bpe_tokenizer, TEMPLATES["pite"], vid, cfg, random.Random(0))
    text = _expanded_text(bpe_tokenizer, ex)
    assert text.count("During which frames can we see") == 1 and text.count("This is a video with 100 frames:") == 1
    assert "rolls the ball to the left" not in text and "Could you please" not in text
    assert ex.head_pos.numel() == 0
    # a sample without events gives nothing (and says so)
    examples, dropped = build_examples(_sample(caption, _spans(caption, "a man")), bpe_tokenizer, TEMPLATES["pite"],
                                       vid, cfg, random.Random(0))
    assert examples == [] and dropped["sample without stage-3 data"] == 1
