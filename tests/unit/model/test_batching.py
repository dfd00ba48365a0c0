"""Batching: dynamic padding to the longest sequence of a batch."""

from __future__ import annotations

import numpy as np

from pipelines.model import batching


def test_dynamic_padding_pads_to_the_longest_of_the_batch() -> None:
    batch = batching.pad_batch(
        [np.array([5, 6, 7], dtype=np.int32), np.array([8], dtype=np.int32)], pad_token_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
