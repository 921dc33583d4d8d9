"""Losses as (sum, count) pairs, in fp32, so a trainer can normalise by the count over its whole global batch.

With gradient accumulation and DDP a mean per micro-batch weighs a token of a short micro-batch more than one
of a long one; dividing each local sum by the global count (all-reduced, clamped to >= 1) does not.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from model.encoding import IGNORE_INDEX


def normalise(total: torch.Tensor, count, global_count=None) -> torch.Tensor:
    """total / count, with `global_count` (a number or tensor, e.g. all-reduced) taking the count's place."""
    denom = count if global_count is None else global_count
    denom = torch.as_tensor(denom, dtype=torch.float32, device=total.device).clamp(min=1.0)
    return total / denom


def lm_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions (logits at i predict labels at i+1), and their count."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (target != IGNORE_INDEX).sum()


def masked_l1_sum(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over masked points of the mean |pred - target| over the last (x, y) axis, and the number of points.

    `mask` has the shape of `pred` without its last axis; masked-out targets may hold anything (NaN too).
    """
    pred, target = pred.float(), target.float()
    mask = mask.bool()
    err = (pred[mask] - target[mask]).abs().mean(dim=-1)
    return err.sum(), mask.sum()


def target_counts(batch: dict) -> dict[str, torch.Tensor]:
    """The local counts a batch contributes to each loss's denominator (before any forward pass).

    A trainer sums these over its accumulation micro-batches and all-reduces them over ranks, then passes the
    result as `PiteModel.forward(..., counts=...)`.
    """
    labels: Optional[torch.Tensor] = batch.get("labels")
    return {
        "lm": (labels[:, 1:] != IGNORE_INDEX).sum() if labels is not None else torch.tensor(0),
        "loc": batch["loc_mask"].sum() if batch.get("loc_mask") is not None else torch.tensor(0),
        "traj": batch["traj_mask"].sum() if batch.get("traj_mask") is not None else torch.tensor(0),
    }
