"""Frame readout: a phrase's position in each frame, read by pointing at that frame's visual tokens.

The paper reads a trajectory from one hidden state, `trajectory_projector(h)` (hidden -> K*T*2): the phrase's state
must hold all T positions. A 7B LLM over CLIP features can learn that; the tiny CPU demo LLM does not (measured:
its trajectories stay flat in time, model/adapters.py and the README say more). With `model.frame_readout` the
heads also get a pointer term: the phrase's last hidden state is a query, each frame's S visual tokens are keys, and a
softmax over the S tokens of frame t mixes their values (hidden -> 2), giving one position per frame. The visual
tokens are their last hidden states (`frame_readout_source: hidden`) or the adapter's tokens as they entered the
LLM (`tokens`: exact keypoints, which the demo uses; after stage 2, held-out L1 0.092 and 0.100 in two runs,
against 0.097 with `hidden` and 0.122 without a readout):

    r[m, t] = sum_s softmax_s(q(h_m) . k(v_{t,s}) / sqrt(d)) * value(v_{t,s})
    trajectory[m, k, t] = trajectory_projector(h_m)[k, t] + r[m, t]      (r resampled to T when the clip has n != T)
    localisation[m]     = localization_projector(h_m) + mean_t r[m, t]   (a single frame in stage 1: r of that frame)

Stage 1 trains the pointer on single frames; stage 2's trajectory head starts as the localisation head repeated,
so it starts as stage 1's localisation applied frame by frame: time is in the readout from the first step. The
softmax runs within a frame only, so with one token per frame (the linear adapter) it could not pick an object:
the model refuses that combination.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FrameReadout(nn.Module):
    def __init__(self, hidden: int, dim: int = 64, device=None):
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(hidden, dim, device=device)
        self.key = nn.Linear(hidden, dim, device=device)
        self.value = nn.Linear(hidden, 2, device=device)

    def forward(self, queries: torch.Tensor, rows: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(M, H) phrase states of batch rows `rows` (M,), (B, n, S, H) frame token states -> (M, n, 2).

        Computed row by row: gathering every phrase's own copy of its row's keys would need M*n*S*d floats
        (a generate() call reads one phrase per generated token)."""
        out = queries.new_zeros(queries.shape[0], frames.shape[1], 2)
        q = self.query(queries)
        for b in torch.unique(rows).tolist():
            pick = rows == b
            keys, values = self.key(frames[b]), self.value(frames[b])  # (n, S, d), (n, S, 2)
            scores = torch.einsum("md,nsd->mns", q[pick], keys) / math.sqrt(self.dim)
            out[pick] = torch.einsum("mns,nsc->mnc", torch.softmax(scores, dim=-1), values)
        return out


def to_frames(per_frame: torch.Tensor, n_valid: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(M, n, 2) positions over each phrase's first `n_valid` (M,) frames -> (M, n_frames, 2), linearly resampled
    where a clip has another number of frames than the head predicts (one frame: held)."""
    if per_frame.shape[1] == n_frames and bool((n_valid == n_frames).all()):
        return per_frame
    out = per_frame.new_empty(per_frame.shape[0], n_frames, 2)
    for i, n in enumerate(n_valid.tolist()):
        seq = per_frame[i, :n].T[None]  # (1, 2, n)
        if n == 1:
            out[i] = seq[0, :, :1].T.expand(n_frames, 2)
        else:
            out[i] = F.interpolate(seq, size=n_frames, mode="linear", align_corners=True)[0].T
    return out


def visual_token_states(hidden: torch.Tensor, input_ids: torch.Tensor, starts: Optional[torch.Tensor],
                        video_token_id: int, s: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The visual tokens' states of each row: ((B, n_max, S, H), frames per row (B,)); None without video. `starts`
    is PiteModel.embed()'s map of the expanded layout (None: unexpanded); S tokens per frame."""
    is_video = input_ids == video_token_id
    per_row = is_video.sum(dim=1)
    if not bool(per_row.any()):
        return None
    b = input_ids.shape[0]
    rows = torch.arange(b, device=input_ids.device)[:, None].expand_as(input_ids)[is_video]  # (N,) row-major
    first = starts[is_video] if starts is not None else is_video.nonzero()[:, 1]
    index = first[:, None] + torch.arange(s, device=first.device)[None]  # (N, S) positions in `hidden`
    frame = is_video.long().cumsum(dim=1)[is_video] - 1  # each frame's index within its row
    states = hidden.new_zeros(b, int(per_row.max()), s, hidden.shape[-1])
    states[rows, frame] = hidden[rows[:, None], index]
    return states, per_row


def add_readout(readout: FrameReadout, loc: torch.Tensor, traj: torch.Tensor, hidden: torch.Tensor,
                rows: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor],
                n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads' outputs (M, 2), (M, K, T, 2) plus the readout's term for the states whose row has frames:
    its mean over the frames for the localisation, its per-frame positions resampled to T for every point."""
    states, n_valid = frames
    has = n_valid[rows] > 0
    if not bool(has.any()):
        return loc, traj
    r = readout(hidden[has], rows[has], states.to(hidden.dtype)).float()
    n = n_valid[rows[has]]
    valid = (torch.arange(r.shape[1], device=r.device)[None] < n[:, None]).float()
    loc = loc.clone()
    loc[has] += (r * valid[..., None]).sum(1) / n[:, None].float()
    traj = traj.clone()
    traj[has] += to_frames(r, n, n_frames)[:, None]
    return loc, traj
