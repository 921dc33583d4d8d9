"""Per-clip annotation: decode a video, find its nouns, ground, segment, pick points, track, extract features.

No Ray and no file layouts here (docs/design.md, "Layout"): every function takes a clip and returns arrays and records.
"""
