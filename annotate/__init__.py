"""Per-clip annotation: decode a video, find its nouns, ground, segment, pick points, track, extract features.

No Ray and no file layouts here (docs/design.md, "Layout"): every function takes a clip and returns arrays and records.

The chain, in the order a clip flows through it (`pipeline.STAGE_NAMES`); a stage with more than one module is a
package whose `__init__` is its public face, with one module per backend named by its config value:
- `decode/`: PyAV decoding of the T samples and the tracking frames (`video.py`, `container.py`);
- `nouns/`: the caption's noun phrases (spaCy, `rules.py`);
- `ground/`: a box per phrase (`given.py`, `groundingdino.py`, `sam3.py`; shared `base.py`);
- `segment/`: a mask per box (`grabcut.py`, `sam.py`, `sam_build.py`, `auto.py`; shared `base.py`);
- `points.py`: K points per object inside its mask;
- `track/`: the points over the tracking frames (`lk.py`, `cotracker.py`, `windows.py`; shared `base.py`);
- `propagate/`: with `confidence.propagation`, each object's mask carried through the tracking frames by a video
  segmenter (`video.py`), checked against the points (`agreement.py`);
- `confidence.py`: how far each object's annotation can be trusted, from signals of the stages;
- `features.py`: per-frame features for the model (thumbnails, CLIP).

What every stage shares: `stage.py` (the Stage protocol), `item.py` (the record a clip's stages fill), `clip.py` and
`frames.py` (decoded frames, sizes and coordinates), `config.py`, `errors.py`, `device.py` (device and dtype),
`storage.py` (paths and bucket URLs), `pipeline.py` (building the chain). What leaves a clip: `assemble.py` and
`schema.py` (the sample and its contract), `quality.py` and `metrics.py` (against ground truth), `draw.py`
(pictures). `synthetic/` makes clips with exact ground truth.
"""
