"""Ground stage: given boxes (matching, scaling, drops) and Grounding DINO (phrase tokens, box conversion, prompt
split, thresholds, the frame loop, and a tiny random model saved and loaded from a dir)."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.ground import (
    PLURAL_NOTE, GivenGrounder, build_prompts, cxcywh_to_xyxy, fit_box, make_grounder, match_phrase, pick_boxes,
)
from annotate.item import Phrase
from tests.annotate_helpers import dropped, gdino_cfg, ground_item, make_clip



# --- given boxes --------------------------------------------------------------------------------------------------


def test_match_phrase_contains_case_words():
    ps = [Phrase("A red ball", 0, 10), Phrase("the ball", 0, 8), Phrase("a dog", 0, 5), Phrase("a dog", 0, 5)]
    assert match_phrase("a red ball", ps) == 0  # exact
    assert match_phrase("RED  Ball", ps) == 0  # case and spaces do not matter
    assert match_phrase("ball", ps) == 1  # the shortest phrase that contains it
    assert match_phrase("a dog", ps) == 2  # first of two equal phrases
    assert match_phrase("all", ps) is None  # whole words only: "ball" does not contain "all"
    assert match_phrase("cat", ps) is None
    assert match_phrase("  ", ps) is None


def test_fit_box():
    np.testing.assert_array_equal(fit_box(np.array([-5.0, 2, 10, 60]), 64, 48)[0], [0, 2, 10, 48])
    assert fit_box(np.array([70.0, 2, 90, 20]), 64, 48) == (None, "box outside the frame")
    assert fit_box(np.array([-20.0, 2, 0, 20]), 64, 48) == (None, "box outside the frame")  # touches the edge
    assert fit_box(np.array([10.0, 5, 10, 20]), 64, 48) == (None, "degenerate box")
    assert fit_box(np.array([10.0, 25, 20, 20]), 64, 48) == (None, "degenerate box")


def given_clip():
    # decoded 64x48 at scale 0.5 (source 128x96); tracking frames at source indices 0, 10, ..., 90
    return make_clip(np.zeros((10, 48, 64, 3)), np.arange(0, 100, 10), scale=0.5, num_frames=100)


def test_given_matching_scaling_and_drops():
    caption = "A red ball, a dog, the sofa, a lamp, a cup and two pillows."
    texts = ["A red ball", "a dog", "the sofa", "a lamp", "a cup", "two pillows"]
    boxes = [
        {"phrase": "Red Ball", "frame": 20, "box": [20, 10, 60, 50]},
        {"phrase": "red ball", "frame": 10, "box": [100, 60, 200, 200]},  # earlier frame: this one is kept
        {"phrase": "dog", "frame": 0, "box": [200, 0, 300, 40]},  # x0 = 100 decoded px > width 64
        {"phrase": "the sofa", "frame": 0, "box": [10, 10, 10, 50]},  # zero width
        {"phrase": "lamp", "frame": 30, "box": ["a", 1, 2, 3]},
        {"phrase": "a cat", "frame": 0, "box": [0, 0, 10, 10]},  # no such noun phrase
        {"phrase": "pillows", "frame": 5, "box": [0, 0, 10, 10]},  # inside the clip but not a tracking frame
        {"phrase": "pillows", "frame": 500, "box": [0, 0, 10, 10]},  # outside the clip
    ]
    item = ground_item(caption, texts, given_clip(), boxes)
    GivenGrounder(AnnotateConfig()).process([item])
    assert item.ok
    (g,) = item.groundings
    assert (g.phrase_index, g.source_frame, g.track_frame) == (0, 10, 1)
    np.testing.assert_allclose(g.box, [50, 30, 64, 48])  # [100,60,200,200] * 0.5, clipped to 64x48
    assert g.score == 1.0 and "2 boxes given: kept the earliest frame (10)" in g.note
    assert dropped(item) == {
        "a dog": "box outside the frame",
        "the sofa": "degenerate box",
        "a lamp": "malformed box",
        "a cup": "no box given",
        "two pillows": "frame 5 not decoded for tracking",
    }
    assert item.unmatched == [{"phrase": "a cat", "frame": 0, "box": [0, 0, 10, 10],
                               "reason": "no noun phrase of the caption contains it (the caption's noun phrases: "
                                         "'A red ball', 'a dog', 'the sofa', 'a lamp', 'a cup', 'two pillows')"}]
    # spans of the drops point back into the caption
    for d in item.dropped:
        assert caption[slice(*d["char_span"])] == d["phrase"]


def test_given_scaling_exact_box():
    item = ground_item("A red ball.", ["A red ball"], given_clip(),
                     [{"phrase": "ball", "frame": 90, "box": [20, 10, 60, 50.5]}])
    GivenGrounder(AnnotateConfig()).process([item])
    (g,) = item.groundings
    assert (g.track_frame, g.source_frame) == (9, 90)
    np.testing.assert_allclose(g.box, [10, 5, 30, 25.25])


@pytest.mark.parametrize("bad", [
    {"phrase": "dog", "frame": "0", "box": [0, 0, 4, 4]},
    {"phrase": "dog", "frame": 1.5, "box": [0, 0, 4, 4]},
    {"phrase": "dog", "frame": 0, "box": [0, 0, 4]},
    {"phrase": "dog", "frame": 0, "box": [0, 0, float("nan"), 4]},
    {"phrase": "dog", "frame": 0, "box": None},
])
def test_given_malformed(bad):
    item = ground_item("A dog.", ["A dog"], given_clip(), [bad])
    make_grounder(AnnotateConfig()).process([item])
    assert dropped(item) == {"A dog": "malformed box"}
    assert item.error == ("ground", "no phrase grounded (1 x malformed box)")


def test_a_given_phrase_that_matches_no_noun_phrase_is_named_with_what_to_write():
    """The box is named in the reject, with the caption's phrases to pick from or the one with its head word."""
    item = ground_item("A kitten rests on the couch.", ["A kitten", "the couch"], given_clip(),
                     [{"phrase": "a fluffy cat", "frame": 0, "box": [0, 0, 10, 10]}])
    make_grounder(AnnotateConfig()).process([item])
    assert item.error == ("ground", "no phrase grounded: given phrase 'a fluffy cat' is in no noun phrase of the "
                                    "caption (the caption's noun phrases: 'A kitten', 'the couch'; 2 x no box given)")
    item = ground_item("A red apple on a table.", ["A red apple", "a table"], given_clip(),
                     [{"phrase": "the apple", "frame": 0, "box": [0, 0, 10, 10]},
                      {"phrase": "a chair", "frame": 0, "box": [0, 0, 10, 10]}])
    make_grounder(AnnotateConfig()).process([item])
    assert item.error == ("ground", "no phrase grounded: given phrase 'the apple' is in no noun phrase of the "
                                    "caption (write it as the caption does: 'A red apple'; 1 more given phrase(s) "
                                    "matched none; 1 x no box given)")


def test_given_no_boxes_and_no_clip():
    item = ground_item("A dog and a cat.", ["A dog", "a cat"], given_clip(), None)
    make_grounder(AnnotateConfig()).process([item])
    assert dropped(item) == {"A dog": "no box given", "a cat": "no box given"}
    assert item.error == ("ground", "no phrase grounded (2 x no box given)")
    item = ground_item("A dog.", ["A dog"], None, [{"phrase": "dog", "frame": 0, "box": [0, 0, 4, 4]}])
    make_grounder(AnnotateConfig()).process([item])
    assert item.error == ("ground", "clip not decoded")


# --- Grounding DINO: pure parts -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir).tokenizer


def tokens_of(tokenizer, prompt):
    ids = tokenizer(prompt.text)["input_ids"]
    return [[tokenizer.convert_ids_to_tokens(ids[t]) for t in pos] for pos in prompt.token_positions]


def test_phrase_tokens_with_a_shared_word(tokenizer):
    (prompt,), skipped = build_prompts(["A red ball", "a red cup"], tokenizer, 16)
    assert skipped == {} and prompt.text == "a red ball. a red cup."
    assert prompt.token_positions == [[1, 2, 3], [5, 6, 7]]  # [CLS] a red ball . a red cup . [SEP]
    assert tokens_of(tokenizer, prompt) == [["a", "red", "ball"], ["a", "red", "cup"]]

    # Query 1 fires on the second "red" only: that is the cup's token, not the ball's.
    logits = torch.full((1, 3, 16), -10.0)
    logits[..., 10:] = -math.inf  # padding to max_text_len, as the model pads
    logits[0, 1, 6] = 4.0
    logits[0, 2, 3] = 2.0  # query 2 fires on "ball"
    hits = pick_boxes(logits, prompt.token_positions, box_threshold=0.35, text_threshold=0.25)
    assert hits.kept.tolist() == [[True, True]]
    assert hits.query.tolist() == [[2, 1]]
    np.testing.assert_allclose(hits.score[0], [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-4))], rtol=1e-6)


def test_pick_boxes_thresholds():
    # one prompt of two phrases: tokens [1, 2] and [4, 5]
    positions = [[1, 2], [4, 5]]
    logits = torch.full((2, 2, 8), -6.0)
    logits[0, 0, 1] = 3.0  # frame 0, query 0: confident on phrase 0 (0.95) ...
    logits[0, 0, 5] = -0.5  # ... and weakly on phrase 1 (0.38 >= text 0.25): a box of phrase 1 as well
    logits[1, 1, 4] = -0.8  # frame 1: phrase 1 at 0.31 alone: the query's best is below box 0.35
    hits = pick_boxes(logits, positions, box_threshold=0.35, text_threshold=0.25)
    assert hits.kept.tolist() == [[True, True], [False, False]]
    np.testing.assert_allclose(hits.box_score[0], [torch.sigmoid(torch.tensor(3.0))] * 2, rtol=1e-6)
    np.testing.assert_allclose(hits.score[1, 1], torch.sigmoid(torch.tensor(-0.8)), rtol=1e-6)
    assert hits.query[1, 1] == 1  # the best query is reported even when none passed
    strict = pick_boxes(logits, positions, box_threshold=0.35, text_threshold=0.5)
    assert strict.kept.tolist() == [[True, False], [False, False]]


def test_cxcywh_to_xyxy_by_hand_and_against_post_process(tokenizer, tiny_dir):
    np.testing.assert_allclose(cxcywh_to_xyxy([[0.5, 0.25, 0.2, 0.1]], 200, 100), [[80, 20, 120, 30]])
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    gen = torch.Generator().manual_seed(1)
    pred_boxes = torch.rand(2, 5, 4, generator=gen) * 0.5 + 0.1
    logits = torch.randn(2, 5, 16, generator=gen)
    outputs = SimpleNamespace(logits=logits, pred_boxes=pred_boxes)
    input_ids = torch.tensor([tokenizer("a cat. a dog.")["input_ids"] + [0] * 9] * 2)
    results = processor.post_process_grounded_object_detection(
        outputs, input_ids=input_ids, threshold=0.0, text_threshold=0.5, target_sizes=[(48, 64), (48, 64)])
    for b in range(2):
        np.testing.assert_allclose(results[b]["boxes"].numpy(), cxcywh_to_xyxy(pred_boxes[b].numpy(), 64, 48),
                                   rtol=1e-5, atol=1e-4)


def test_long_prompts_are_split(tokenizer):
    texts = ["a red ball", "a blue cup", "the dog", "two pillows", "a red chair", "the cat", "a lamp"]
    prompts, skipped = build_prompts(texts, tokenizer, 16)
    assert skipped == {}
    # [CLS] a red ball . a blue cup . the dog . two pillows . [SEP] is exactly 16 tokens: the limit, used fully
    assert [p.phrase_ids for p in prompts] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [len(tokenizer(p.text)["input_ids"]) for p in prompts] == [16, 12]
    assert tokens_of(tokenizer, prompts[1]) == [["a", "red", "chair"], ["the", "cat"], ["a", "lamp"]]
    too_long = "a " + "red ball " * 7
    prompts, skipped = build_prompts(["a dog", too_long, "a cat"], tokenizer, 16)
    assert [p.phrase_ids for p in prompts] == [[0, 2]]
    assert skipped == {1: "phrase longer than the model's text limit (16 tokens)"}


def test_missing_weights_is_one_line_config_error(tmp_path):
    cfg = AnnotateConfig()
    cfg.ground.backend = "groundingdino"
    for weights in (None, str(tmp_path / "nope"), str(tmp_path)):
        cfg.ground.weights = weights
        with pytest.raises(ConfigError) as err:
            make_grounder(cfg)
        msg = str(err.value)
        assert msg.startswith("ground.weights:") and "\n" not in msg
    cfg.ground.backend = "owlvit"
    with pytest.raises(ConfigError, match="ground.backend"):
        make_grounder(cfg)


# --- Grounding DINO: the stage --------------------------------------------------------------------------------------


class StubModel:
    """Stands in for the network to test the frame loop: frame i (a constant image of value 20 i) shows phrase
    word w from frame APPEAR[w] on; query 0 then scores 3.0 on that word's tokens, with box BOX."""

    APPEAR = {"ball": 4, "dog": 0, "pillows": 9, "sofa": 2}  # "cup" never appears
    BOX = [0.5, 0.5, 0.25, 0.5]  # cxcywh -> on 64x48: [24, 12, 40, 36]

    def __init__(self, config, tokenizer):
        self.config, self.tokenizer, self.frames_seen = config, tokenizer, []

    def __call__(self, pixel_values, input_ids, **_):
        # undo the processor's normalisation (ImageNet mean/std of channel 0) to read each frame's index
        value = (pixel_values[:, 0].mean(dim=(1, 2)) * 0.229 + 0.485) * 255
        frames = torch.round(value / 20).long().tolist()
        self.frames_seen += frames
        B, L = input_ids.shape
        logits = torch.full((B, 10, self.config.max_text_len), -3.0)
        logits[:, :, L:] = -math.inf
        for b, frame in enumerate(frames):
            for t, tok in enumerate(self.tokenizer.convert_ids_to_tokens(input_ids[b])):
                if frame >= self.APPEAR.get(tok, 10**9):
                    logits[b, 0, t] = 3.0
        boxes = torch.tensor([self.BOX] * 10).expand(B, 10, 4)
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


def test_frame_loop_keeps_earliest_confident_frame(tiny_dir):
    frames = np.stack([np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)])
    clip = make_clip(frames, np.arange(0, 50, 5))  # source indices 0, 5, ..., 45
    caption = "A red ball, a dog, a cup, two pillows and the sofa."
    texts = ["A red ball", "a dog", "a cup", "two pillows", "the sofa"]  # 17 tokens: two prompts
    item = ground_item(caption, texts, clip, plural={"two pillows"})
    stage = make_grounder(gdino_cfg(tiny_dir, every_n_frames=3, batch_size=2))
    stage.ready()
    stage.model = StubModel(stage.model.config, stage.processor.tokenizer)
    stage.process([item])

    assert item.ok
    got = {item.phrases[g.phrase_index].text: (g.track_frame, g.source_frame) for g in item.groundings}
    # grounded on frames 0, 3, 6, 9: the ball appears at 4 -> found on 6; the sofa appears at 2 -> found on 3
    assert got == {"A red ball": (6, 30), "a dog": (0, 0), "two pillows": (9, 45), "the sofa": (3, 15)}
    for g in item.groundings:
        np.testing.assert_allclose(g.box, [24, 12, 40, 36], rtol=1e-5)
        np.testing.assert_allclose(g.score, 1 / (1 + math.exp(-3)), rtol=1e-5)
    notes = {item.phrases[g.phrase_index].text: g.note for g in item.groundings}
    assert notes["two pillows"] == PLURAL_NOTE and notes["a dog"] == ""
    assert dropped(item) == {"a cup": "no box above threshold (best score 0.05)"}
    assert set(stage.model.frames_seen) == {0, 3, 6, 9}


def test_tiny_model_end_to_end(tiny_dir):
    """The real network, random weights: every phrase ends as a box inside the frame or a threshold drop."""
    rng = np.random.default_rng(0)
    # textured frames: smooth noise so the backbone sees structure, 60x80 decoded
    base = rng.integers(0, 255, (6, 15, 20, 3)).astype(np.uint8)
    frames = base.repeat(4, axis=1).repeat(4, axis=2)
    clip = make_clip(frames, np.arange(6) * 3)
    caption = "A red ball near a dog, two pillows on the sofa and a lamp."
    texts = ["A red ball", "a dog", "two pillows", "the sofa", "a lamp"]

    def run(**ground):
        item = ground_item(caption, texts, clip, plural={"two pillows"})
        make_grounder(gdino_cfg(tiny_dir, every_n_frames=2, batch_size=2, **ground)).process([item])
        return item

    item = run()  # default thresholds 0.35 / 0.25
    grounded = {g.phrase_index for g in item.groundings}
    reasons = dropped(item)
    assert len(grounded) + len(reasons) == len(texts)
    for g in item.groundings:
        assert g.track_frame in (0, 2, 4) and g.source_frame == 3 * g.track_frame
        x0, y0, x1, y1 = g.box
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60
        assert 0.25 <= g.score <= 1.0
    for reason in reasons.values():
        assert re.fullmatch(r"no box above threshold \(best score [01]\.\d\d\)", reason)
    assert item.ok == bool(grounded)
    assert item.versions["ground"].startswith("groundingdino/transformers-")

    loose = run(box_threshold=0.0, text_threshold=0.0)  # everything is a box: all on the first frame
    assert loose.ok and loose.dropped == []
    assert [g.phrase_index for g in loose.groundings] == [0, 1, 2, 3, 4]
    assert all(g.track_frame == 0 for g in loose.groundings)
    assert [g.note for g in loose.groundings] == ["", "", PLURAL_NOTE, "", ""]

    strict = run(box_threshold=1.01, text_threshold=1.01)  # nothing can pass
    assert set(dropped(strict)) == set(texts)
    assert strict.error == ("ground", "no phrase grounded (5 x no box above threshold)")
