"""Where tokens and frames sit in a padded batch: position ids, the frames of each row, and the layout after a
video position becomes its frame's S tokens (model/pite.py's embed; model/generate.py follows it)."""

from __future__ import annotations

from typing import Optional

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row, whatever side the padding is on (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def stack_frames(video_features, is_video: torch.Tensor) -> Optional[torch.Tensor]:
    """All rows' frames, concatenated in row order, checked against each row's number of video positions."""
    per_row = is_video.sum(dim=1).tolist()
    if video_features is None:
        if any(per_row):
            raise ValueError(f"input has video positions {per_row} per row but no video_features")
        return None
    if isinstance(video_features, torch.Tensor):
        if video_features.dim() != 3:
            raise ValueError(f"video_features: expected (B, n, D), got {tuple(video_features.shape)}")
        video_features = list(video_features)
    if len(video_features) != len(per_row):
        raise ValueError(f"video_features: {len(video_features)} entries for a batch of {len(per_row)}")
    sizes = [0 if v is None else v.shape[0] for v in video_features]
    if sizes != per_row:
        raise ValueError(f"video_features: {sizes} frames per row, the input has {per_row} video positions")
    frames = [v for v in video_features if v is not None and v.shape[0]]
    return torch.cat(frames).to(is_video.device) if frames else None


def frame_times(is_video: torch.Tensor) -> torch.Tensor:
    """Each stacked frame's time in its row's clip, in [0, 1]; NaN for a row with a single frame (an image)."""
    per_row = is_video.sum(dim=1)
    times = []
    for n in per_row.tolist():
        if n == 1:
            times.append(torch.full((1,), float("nan")))
        elif n:
            times.append(torch.arange(n, dtype=torch.float32) / (n - 1))
    return torch.cat(times).to(is_video.device)


def follow(values: torch.Tensor, starts: Optional[torch.Tensor], shape, fill: int) -> torch.Tensor:
    """Per-token `values` (B, L) moved to their positions in embed()'s expanded layout (`starts`; None: not
    expanded), `fill` at the positions a frame's extra tokens took."""
    if starts is None:
        return values
    return values.new_full(shape, fill).scatter(1, starts, values)


def expand_video(embeds: torch.Tensor, mask: torch.Tensor, is_video: torch.Tensor,
                  adapted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every video position of `embeds` becomes the S tokens of its frame (`adapted` (N, S, H), row-major)."""
    b, length, hidden = embeds.shape
    s = adapted.shape[1]
    widths = torch.where(is_video, s, 1)
    ends = widths.cumsum(dim=1)  # (B, L): one past each token's last new position
    totals = ends[:, -1]
    new_length = int(totals.max())
    # When every row ends in a real token (left padding, or none: what `generate` needs) the rows stay aligned to
    # the right end; otherwise (right padding) to the left. Shorter rows get padding on the other side.
    offset = new_length - totals if bool(mask[:, -1].all()) else torch.zeros_like(totals)
    starts = ends - widths + offset[:, None]
    out = embeds.new_zeros(b, new_length, hidden)
    new_mask = mask.new_zeros(b, new_length)
    text = ~is_video
    rows = torch.arange(b, device=embeds.device)[:, None].expand(b, length)
    out[rows[text], starts[text]] = embeds[text]
    new_mask[rows[text], starts[text]] = mask[text]
    video_rows, video_starts = rows[is_video], starts[is_video]  # (N,) in row-major order, as `adapted`
    slot = torch.arange(s, device=embeds.device)
    out[video_rows[:, None], video_starts[:, None] + slot[None]] = adapted
    new_mask[video_rows[:, None], video_starts[:, None] + slot[None]] = 1
    return out, new_mask, starts
