"""The synthetic world: clips of textured shapes over a panning textured background, with exact ground truth.

Everything happens in memory (no file layouts: docs/design.md, "Layout"): `make_clip(seed, index, params)` returns
the frames, a caption, timed events, given boxes and a `GroundTruth`; `encode_mp4` turns frames into H.264 bytes;
`pipelines.synth` writes them. `GroundTruth` is also the gt-file format (`save` / `load`) that quality metrics read.

How a clip is made, deterministically from its seed:
- a large procedurally textured background image, cropped along a smooth camera path (the pan);
- 2-4 objects of named colours, shapes and textures (stripes / checks / dots over fine grain, so a Lucas-Kanade
  tracker finds texture everywhere on them), each with an affine local->image transform per frame: a curved path
  with speed changes and stops, a slow scale change and a small rotation; some clips have an object that enters
  after frame 0, one that leaves, and two objects that cross with one in front of the other (z-order);
- ground truth from the same transforms: visible-pixel masks, visible boxes, and `track_points` for dense tracks;
- a caption naming every object once by a noun phrase, and events ("the red triangle stops") read off the motion.

Modules: `params` (WorldParams, the vocabulary), `sprites`, `motion`, `geometry` (the affine formulas and the
renderer), `truth` (GroundTruth), `language` (phrases, caption, events), `world` (make_clip), `encode`.

Coordinates follow docs/design.md ("Frames, time and coordinates"): continuous, pixel (i, j) covers [i, i+1) x
[j, j+1). Object-local coordinates are the same convention on the object's sprite (an S x S texture + alpha image).
"""

from annotate.synthetic.encode import encode_mp4
from annotate.synthetic.params import COLOURS, SHAPES, TEXTURES, WorldParams, params_dict
from annotate.synthetic.truth import GT_VERSION, GroundTruth
from annotate.synthetic.world import SynthClip, clip_rng, make_clip, video_id

__all__ = ["COLOURS", "GT_VERSION", "SHAPES", "TEXTURES", "GroundTruth", "SynthClip", "WorldParams", "clip_rng",
           "encode_mp4", "make_clip", "params_dict", "video_id"]
