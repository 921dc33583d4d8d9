"""Grounding that uses all of its evidence (ground.pick: best): each phrase keeps its highest-scoring detection over
the grounding frames, the other confident frames are its re-detections, and two phrases on one box are one object,
tracked once, each with its own row."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from annotate.config import AnnotateConfig
from annotate.ground import make_grounder, mark_same_objects
from annotate.item import Grounding
from annotate.track import make_tracker
from tests.annotate_helpers import gdino_cfg, ground_item, make_clip
from tests.annotate_helpers import POINTS_U, Scene, track_item


class RampModel:
    """Frame i (a constant image of value 20 i): phrase word w scores LOGITS[w][i] on its tokens (query 0), box
    BOXES[i] (cxcywh, normalised)."""

    LOGITS = {"ball": [-3, 0.5, 2.0, 1.0, -3, -3, -3, -3, -3, -3],  # weak early, best at 2, again at 3
              "dog": [-3, -3, -3, -3, -3, -3, -3, 0.2, 1.5, 2.5]}  # enters late and grows
    BOXES = [[0.2 + 0.05 * i, 0.5, 0.2, 0.4] for i in range(10)]

    def __init__(self, config, tokenizer):
        self.config, self.tokenizer = config, tokenizer

    def __call__(self, pixel_values, input_ids, **_):
        value = (pixel_values[:, 0].mean(dim=(1, 2)) * 0.229 + 0.485) * 255
        frames = torch.round(value / 20).long().tolist()
        b, length = input_ids.shape
        logits = torch.full((b, 10, self.config.max_text_len), -3.0)
        logits[:, :, length:] = -math.inf
        for row, frame in enumerate(frames):
            for t, tok in enumerate(self.tokenizer.convert_ids_to_tokens(input_ids[row])):
                if tok in self.LOGITS:
                    logits[row, 0, t] = self.LOGITS[tok][frame]
        boxes = torch.tensor([self.BOXES[f] for f in frames])[:, None].expand(b, 10, 4)
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


def ground(tiny_dir, pick):
    frames = np.stack([np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)])
    item = ground_item("A ball and a dog.", ["A ball", "a dog"], make_clip(frames, np.arange(10)))
    stage = make_grounder(gdino_cfg(tiny_dir, every_n_frames=1, batch_size=4, pick=pick, box_threshold=0.6,
                                    text_threshold=0.6))
    stage.ready()
    stage.model = RampModel(stage.model.config, stage.processor.tokenizer)
    stage.process([item])
    assert item.ok, item.error
    return {item.phrases[g.phrase_index].text: g for g in item.groundings}


def test_each_phrase_keeps_its_best_detection_and_the_rest_are_redetections(tiny_dir):
    got = ground(tiny_dir, "best")
    # sigmoid(0.5) = 0.62 passes 0.6 at frame 1, but frame 2 scores 0.88: the ball is grounded there
    assert got["A ball"].track_frame == 2 and got["A ball"].score == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert [r[0] for r in got["A ball"].redetections] == [1, 3]
    assert got["a dog"].track_frame == 9 and [r[0] for r in got["a dog"].redetections] == [8]
    # the box of the chosen frame (cx moves 0.05 a frame): frame 2's, in grounding pixels of the 64 px frame
    np.testing.assert_allclose(got["A ball"].box[[0, 2]], [(0.3 - 0.1) * 64, (0.3 + 0.1) * 64], rtol=1e-5)


def test_earliest_keeps_the_first_confident_frame_and_no_redetections(tiny_dir):
    got = ground(tiny_dir, "earliest")
    assert got["A ball"].track_frame == 1 and got["a dog"].track_frame == 8  # sigmoid(0.2) < 0.6 at frame 7
    assert got["A ball"].redetections == []


def test_an_unknown_pick_names_the_key(tiny_dir):
    from annotate.errors import ConfigError

    with pytest.raises(ConfigError, match="ground.pick"):
        make_grounder(gdino_cfg(tiny_dir, pick="first")).setup()


def test_two_phrases_on_one_box_are_one_object_tracked_once():
    gs = [Grounding(0, 3, 3, np.array([10.0, 10, 50, 50])), Grounding(1, 3, 3, np.array([11.0, 10, 50, 51])),
          Grounding(2, 3, 3, np.array([60.0, 10, 90, 50])), Grounding(3, 5, 5, np.array([10.0, 10, 50, 50]))]
    mark_same_objects(gs, 0.8)
    assert [g.same_as for g in gs] == [None, 0, None, None]  # another frame is another sighting, not a duplicate

    scene = Scene(num_frames=12)
    truth = scene.truth(POINTS_U)
    item = track_item(scene.frames, np.stack([truth[:, 0], truth[:, 0] + 1.0]), [0, 0])
    item.groundings[1].phrase_index, item.groundings[1].same_as = 1, 0  # "the square" is "a square"
    calls = []
    tracker = make_tracker(AnnotateConfig())
    inner = tracker.track
    tracker.track = lambda frames, points, q: calls.append(len(points)) or inner(frames, points, q)
    tracker.process([item])
    assert calls == [1] and item.tracks.shape[0] == 2  # tracked once, each phrase keeps its row
    np.testing.assert_array_equal(item.tracks[0], item.tracks[1])
