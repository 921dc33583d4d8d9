"""Vision adapters: per-frame features -> the LLM's input embeddings.

`linear` (the paper's, and the only one a released checkpoint has): one token per frame, `Linear(feat_dim, hidden)`.

`colour_slots` (for the 16x16x3 `thumbnail` features of the CPU demo): S tokens per frame, one per learned colour.
Why it exists: a thumbnail is raw pixels, not a semantic embedding, and a tiny random LLM given one linear token
per frame does not learn to answer "where is the red ball?" from it within a CPU budget. Measured on the demo
(64 clips, held-out seed): with one token per frame, even features that hold each colour's true position in fixed
dims gave a held-out localisation error no better than the constant (0.22 vs 0.19); the LLM memorised the training
clips instead of learning the colour-keyed lookup, which inside one token needs a multiplicative MLP gate. With one
token per colour slot the lookup is attention's own query-key match, and it generalised (0.08-0.10).
Each slot:
  - softly assigns every pixel to S learnable prototype colours (initialised on a lattice of the RGB cube, not on
    any data set's palette) with a learnable sharpness;
  - a spatial softmax over the pixels of the slot gives its keypoint (x, y) in [-1, 1] and a log-mass (how much of
    that colour the frame holds), as in deep spatial autoencoders (Finn et al. 2016);
  - its token = a learned slot identity + Linear(x, y, mass) + Linear((x, y) outer a cosine basis of the frame's
    time in its clip). The last term lets a phrase that attends to its slot in every frame read the trajectory's
    low-frequency coefficients (the average of the tokens), which the trajectory head decodes per frame;
  - plus Linear(cosine basis of the frame's time): when the frame is, as content, so that an answer such as
    "From 12 to 40." can copy it from the tokens a question attends to (RoPE alone gives only relative positions).
    Video LLMs add timestamps to frame tokens for the same reason (TimeChat's time-aware frame encoder).
  Both time terms start at zero, so single frames (stage 1, no time) and clips share what stage 1 learned.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import torch
from torch import nn

from annotate.errors import ConfigError
from model.config import ADAPTERS


class ColourSlotAdapter(nn.Module):
    def __init__(self, feat_dim: int, hidden: int, slots: int = 8, basis: int = 8, device=None):
        super().__init__()
        side = math.isqrt(feat_dim // 3)
        if side * side * 3 != feat_dim:
            raise ConfigError(f"model.adapter colour_slots: feat_dim {feat_dim} is not a square RGB thumbnail "
                              f"(side x side x 3, e.g. 768 = 16 x 16 x 3); use adapter: linear for CLIP features")
        if not 1 <= slots <= 27:
            raise ConfigError(f"model.adapter_slots: expected 1..27, got {slots}")
        self.side, self.slots, self.basis = side, slots, basis
        # Prototype colours: the 3x3x3 lattice of the RGB cube, coarse to fine: its 8 corners (black, white, the
        # primaries and secondaries), the 12 edge midpoints (half-tones such as orange (1, .5, 0) or violet
        # (.5, 0, 1)), the 6 face centres, the centre.
        lattice = list(itertools.product([0.0, 0.5, 1.0], repeat=3))
        halves = lambda c: sum(v == 0.5 for v in c)  # noqa: E731  (0 corner, 1 edge, 2 face, 3 centre)
        ordered = sorted(lattice, key=halves)  # stable: lexicographic within each kind
        self.prototypes = nn.Parameter(torch.tensor(ordered[:slots], device=device))
        self.log_width = nn.Parameter(torch.tensor(-2.0, device=device))  # exp(-2) ~ 0.14 of the RGB range
        self.identity = nn.Parameter(torch.randn(slots, hidden, device=device) * 0.5)
        self.keypoint = nn.Linear(3, hidden, device=device)
        self.motion = nn.Linear(2 * basis, hidden, device=device)
        self.clock = nn.Linear(basis, hidden, bias=False, device=device)
        for weight in (self.motion.weight, self.motion.bias, self.clock.weight):
            nn.init.zeros_(weight)
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        grid = torch.stack([(xs.reshape(-1) + 0.5) / side, (ys.reshape(-1) + 0.5) / side], -1) * 2 - 1
        self.register_buffer("grid", grid.to(device), persistent=False)  # (side*side, 2) pixel centres in [-1, 1]

    @property
    def tokens_per_frame(self) -> int:
        return self.slots

    def keypoints(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, feat_dim) frames -> (N, S, 3): each colour slot's keypoint (x, y) in [-1, 1] and its log-mass."""
        n = frames.shape[0]
        pixels = frames.view(n, self.side * self.side, 3)
        dist = (pixels[:, :, None, :] - self.prototypes[None, None]).pow(2).sum(-1)  # (N, P, S)
        logits = -dist / torch.exp(self.log_width).pow(2)
        weights = torch.softmax(logits, dim=1)  # over pixels, per slot
        xy = torch.einsum("nps,pc->nsc", weights, self.grid.to(weights.dtype))  # (N, S, 2)
        # log of the slot's total (un-normalised) weight, centred near 0 for "a few pixels of this colour".
        mass = (torch.logsumexp(logits, dim=1) - 5.0) / 5.0
        return torch.cat([xy, mass[..., None]], -1)

    def forward(self, frames: torch.Tensor, times: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, feat_dim) frames, optional (N,) times in [0, 1] (NaN: a single image) -> (N, S, hidden)."""
        n = frames.shape[0]
        keypoints = self.keypoints(frames)
        xy = keypoints[..., :2]
        token = self.identity[None].to(xy.dtype) + self.keypoint(keypoints)
        if times is not None:
            known = ~torch.isnan(times)
            t = torch.nan_to_num(times, nan=0.0).to(xy.dtype)
            cos = torch.cos(math.pi * t[:, None] * torch.arange(self.basis, device=t.device, dtype=t.dtype)[None])
            motion = self.motion((xy[..., :, None] * cos[:, None, None, :]).reshape(n, self.slots, -1))
            clock = self.clock(cos)[:, None]  # (N, 1, hidden): the same for every slot of a frame
            token = token + (motion + clock) * known[:, None, None].to(motion.dtype)
        return token


def build_adapter(kind: str, feat_dim: int, hidden: int, slots: int = 8, basis: int = 8, device=None) -> nn.Module:
    if kind == "linear":
        return nn.Linear(feat_dim, hidden, device=device)
    if kind == "colour_slots":
        return ColourSlotAdapter(feat_dim, hidden, slots=slots, basis=basis, device=device)
    raise ConfigError(f"model.adapter: unknown {kind!r} (expected {' | '.join(ADAPTERS)})")


def tokens_per_frame(adapter: nn.Module) -> int:
    return int(getattr(adapter, "tokens_per_frame", 1))
