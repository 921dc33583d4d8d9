"""Propagate stage (with `confidence.propagation`): each object's mask carried through the tracking frames by a
video segmenter, and the point track checked against it (signal `mask_agreement`, used by the confidence stage).

- `agreement.py`: the signal, from per-frame masks and presence against the points, counted window by window;
- `video.py`: transformers' SAM 2-style video trackers (sam2_video, edgetam_video, sam3_tracker), streamed.
"""

from annotate.config import AnnotateConfig
from annotate.errors import ConfigError
from annotate.propagate.agreement import AgreementCounts, agreement_counts
from annotate.propagate.video import FAMILIES, VideoPropagator, patch_edgetam_score_shape
from annotate.stage import Stage

__all__ = ["AgreementCounts", "FAMILIES", "VideoPropagator", "agreement_counts", "make_propagator",
           "patch_edgetam_score_shape"]


def make_propagator(cfg: AnnotateConfig) -> Stage:
    if cfg.confidence.propagation in FAMILIES:
        return VideoPropagator(cfg)
    raise ConfigError(f"confidence.propagation: unknown {cfg.confidence.propagation!r} "
                      f"(none | {' | '.join(FAMILIES)})")
