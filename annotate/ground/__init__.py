"""Ground: place each phrase in one tracking frame by a box (decoded-frame pixels, xyxy).

Every phrase ends as one `Grounding` or one `dropped` entry with its reason; a clip with none grounded is a reject.
One module per backend, named by its `ground.backend` value (docs/design.md, "Backends"):
- `base.py`: what both share: boxes fitted to the frame, the same-object merge, the end of a clip's grounding, the
  weights check;
- `given.py`: boxes from the manifest row, attached to the caption's noun phrases;
- `groundingdino.py`: transformers' Grounding DINO from a local HF-format dir (the grounding frames, batching across
  the clips of an actor batch, the pick over frames);
- `sam3.py`: transformers' SAM 3 prompted with each phrase on the grounding frames: boxes and masks at once;
- `prompts.py`: its text side and scores, pure: phrases joined into prompts, each phrase's own tokens, the box rule.
"""

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.ground.base import (PLURAL_NOTE, check_weights_dir, cxcywh_to_xyxy, finish, fit_box, mark_same_objects,
                                  need_clip, unmatched_hint)
from annotate.ground.given import GivenGrounder, implausible_box, match_phrase, parse_given
from annotate.ground.groundingdino import GroundingDinoGrounder
from annotate.ground.sam3 import Sam3Grounder
from annotate.ground.prompts import (PhraseHits, Prompt, build_prompts, ground_positions, join_prompt,
                                     phrase_token_positions, pick_boxes, prompt_phrase)
from annotate.stage import Stage

__all__ = ["GivenGrounder", "GroundingDinoGrounder", "PLURAL_NOTE", "PhraseHits", "Prompt", "build_prompts",
           "check_weights_dir", "cxcywh_to_xyxy", "finish", "fit_box", "ground_positions", "implausible_box",
           "join_prompt", "make_grounder", "mark_same_objects", "match_phrase", "need_clip", "parse_given",
           "phrase_token_positions", "pick_boxes", "prompt_phrase", "Sam3Grounder", "unmatched_hint"]


def make_grounder(cfg: AnnotateConfig) -> Stage:
    backend = cfg.ground.backend
    if backend == "given":
        return GivenGrounder(cfg)
    if backend == "groundingdino":
        return GroundingDinoGrounder(cfg)
    if backend == "sam3":
        return Sam3Grounder(cfg)
    raise ConfigError(f"ground.backend: unknown backend {backend!r} (given | groundingdino | sam3)")
