"""Padding token-id rows into a batch (right padding, the pad id the classifier pools by)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_batch(input_ids: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Dynamic padding: right-pad to the longest sequence of this batch, not to max_length."""
    longest = max(len(ids) for ids in input_ids)
    padded = torch.full((len(input_ids), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
    for row, ids in enumerate(input_ids):
        padded[row, : len(ids)] = torch.tensor(np.asarray(ids), dtype=torch.long)
        mask[row, : len(ids)] = 1
    return {"input_ids": padded, "attention_mask": mask}
