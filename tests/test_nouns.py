"""Nouns stage: spaCy noun chunks as phrases with exact spans; pronouns / stop nouns skipped; every bad caption
has a defined outcome."""

import time

import pytest

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.item import ClipItem
from annotate.nouns import NounStage, cut_point, extract_phrases, load_spacy


@pytest.fixture(scope="module")
def nlp():
    return load_spacy("en_core_web_sm")  # here only the registry re-upload is installed: exercises the fallback


def make_item(caption, row=0):
    return ClipItem(row=row, video_id=f"v{row}", video="v.mp4", caption=caption)


def run_stage(captions, **nouns):
    cfg = AnnotateConfig()
    for k, v in nouns.items():
        setattr(cfg.nouns, k, v)
    items = [make_item(c, i) for i, c in enumerate(captions)]
    NounStage(cfg).process(items)
    return items


def test_phrases_spans_heads_plural(nlp):
    caption = "A man throws two red balls to his dog in the park while the camera pans."
    (phrases,) = extract_phrases(nlp, [caption])
    assert [p.text for p in phrases] == ["A man", "two red balls", "his dog", "the park"]
    assert [(p.start, p.end) for p in phrases] == [(0, 5), (13, 26), (30, 37), (41, 49)]
    for p in phrases:
        assert caption[p.start:p.end] == p.text
    assert [p.plural for p in phrases] == [False, True, False, False]
    balls = phrases[1]
    assert (balls.head, balls.lemma) == ("balls", "ball")


def test_pronouns_and_stop_nouns_are_not_phrases(nlp):
    captions = ["They watch a bird.", "The video shows a cat on the left side.", "It is raining."]
    got = extract_phrases(nlp, captions)
    assert [p.text for p in got[0]] == ["a bird"]
    assert [p.text for p in got[1]] == ["a cat"]  # "The video" and "the left side" name nothing visible
    assert got[2] == []
    # the stop list is configurable: with an empty one "The video" is a phrase again
    (again,) = extract_phrases(nlp, ["The video shows a cat."], stop_nouns=[])
    assert [p.text for p in again] == ["The video", "a cat"]


def test_non_ascii_and_emoji_spans_exact(nlp):
    caption = "Ein Käfer 🐞 — a café owner 🐶 pets a naïve dog near the Zürich fountain."
    (phrases,) = extract_phrases(nlp, [caption])
    texts = [p.text for p in phrases]
    assert "a café owner" in texts and "a naïve dog" in texts
    for p in phrases:
        assert caption[p.start:p.end] == p.text
    dog = phrases[texts.index("a naïve dog")]
    assert dog.start == caption.index("a naïve dog")


def test_cut_point():
    assert cut_point("short", 10) == 5
    assert cut_point("hello world again", 13) == 11  # at the space, no half word
    assert cut_point("x" * 20, 10) == 10  # no space in reach: hard cut


def test_stage_rejects_and_keeps_going():
    items = run_stage(["", "   ", "It is raining.", "A dog chases a ball."])
    assert [it.error for it in items[:3]] == [
        ("nouns", "empty caption"), ("nouns", "empty caption"), ("nouns", "no noun phrases in caption")]
    good = items[3]
    assert good.ok and [p.text for p in good.phrases] == ["A dog", "a ball"]
    assert "nouns" in good.timings and good.versions["nouns"].startswith("spacy-")


def test_max_phrases_drops_the_rest():
    (item,) = run_stage(["A man gives a dog a bone near a tree."], max_phrases=2)
    assert [p.text for p in item.phrases] == ["A man", "a dog"]
    assert item.dropped == [
        {"phrase": "a bone", "char_span": [18, 24], "reason": "too many phrases"},
        {"phrase": "a tree", "char_span": [30, 36], "reason": "too many phrases"},
    ]


def test_long_caption_is_capped_and_recorded(nlp):
    sentence = "The girl throws a red ball. "  # 28 characters, two phrases
    caption = sentence * 358  # 10,024 characters
    cut = cut_point(caption, 2000)
    assert cut == 1996 and caption[cut] == " "  # the last space before 2000: "... The girl| throws"
    t0 = time.perf_counter()
    (phrases,) = extract_phrases(nlp, [caption], max_chars=2000)
    elapsed = time.perf_counter() - t0
    # 71 whole sentences fit in 1996 characters, then "The girl" of the 72nd
    assert len(phrases) == 2 * 71 + 1
    assert all(p.end <= cut and caption[p.start:p.end] == p.text for p in phrases)
    assert elapsed < 5  # a bound against parsing all 10k characters pathologically, not a benchmark

    (item,) = run_stage([caption], max_chars=2000, max_phrases=1000)
    assert item.ok and len(item.phrases) == 143
    (tail,) = item.dropped
    assert tail["char_span"] == [cut, len(caption)]
    assert tail["reason"] == "caption text beyond 2000 characters not parsed"
    assert tail["phrase"].startswith("throws a red ball.")


def test_missing_model_is_a_config_error():
    cfg = AnnotateConfig()
    cfg.nouns.model = "xx_no_such_model"
    stage = NounStage(cfg)
    with pytest.raises(ConfigError) as err:
        stage.setup()
    msg = str(err.value)
    assert "nouns.model" in msg and "pip install" in msg and "\n" not in msg
