"""Pad examples into the keyword arguments of `PiteModel.forward`.

Head targets are flattened over the batch (M = all supervised phrases): `head_batch[m]`, `head_pos[m]` say
where phrase m's last token sits in the padded batch. Position ids are not built here: the model derives them
from the attention mask, so left and right padding give the same numbers.
"""

from __future__ import annotations

import torch

from model.encoding import IGNORE_INDEX, Example


def collate(examples: list[Example], pad_token_id: int, padding_side: str = "right") -> dict:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not examples:
        raise ValueError("collate: no examples")
    length = max(len(ex.input_ids) for ex in examples)
    b = len(examples)
    input_ids = torch.full((b, length), pad_token_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    head_batch, head_pos = [], []
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        offset = length - n if padding_side == "left" else 0
        input_ids[i, offset:offset + n] = ex.input_ids
        labels[i, offset:offset + n] = ex.labels
        attention_mask[i, offset:offset + n] = 1
        head_batch.append(torch.full((len(ex.head_pos),), i, dtype=torch.long))
        head_pos.append(ex.head_pos + offset)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "video_features": [ex.video for ex in examples],
        "head_batch": torch.cat(head_batch),
        "head_pos": torch.cat(head_pos),
        "loc_target": torch.cat([ex.loc_target for ex in examples]),
        "loc_mask": torch.cat([ex.loc_mask for ex in examples]),
        "traj_target": torch.cat([ex.traj_target for ex in examples]),
        "traj_mask": torch.cat([ex.traj_mask for ex in examples]),
    }


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Move every tensor (also inside the video list) to `device`."""
    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, non_blocking=True)
        if isinstance(x, list):
            return [move(v) for v in x]
        return x
    return {k: move(v) for k, v in batch.items()}
