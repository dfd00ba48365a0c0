"""Head growth for warm starts: known tenants keep their rows, new tenants start fresh."""

from __future__ import annotations

import pytest
import torch

from pipelines.errors import ModelError
from pipelines.model.classifier import grow_head

HEAD = "base_model.model.score.weight"
LORA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def test_grow_head_copies_known_rows_and_keeps_fresh_rows_for_new_tenants() -> None:
    previous = {HEAD: torch.arange(6.0).reshape(3, 2), LORA: torch.ones(4, 2)}
    fresh = {HEAD: torch.full((5, 2), -1.0), LORA: torch.zeros(4, 2)}
    grown = grow_head(previous, fresh, known_labels=3)
    assert torch.equal(grown[HEAD][:3], previous[HEAD])
    assert torch.equal(grown[HEAD][3:], torch.full((2, 2), -1.0))
    assert torch.equal(grown[LORA], previous[LORA])
    assert torch.equal(fresh[HEAD], torch.full((5, 2), -1.0))  # the fresh state is not modified


@pytest.mark.parametrize(
    ("previous", "fresh", "message"),
    [
        ({LORA: torch.ones(8, 2)}, {LORA: torch.ones(4, 2)}, "q_proj.lora_A.weight has shape"),
        ({HEAD: torch.ones(3, 4)}, {HEAD: torch.ones(5, 2)}, "score.weight has shape"),
        ({"unknown.weight": torch.ones(1)}, {}, "does not exist in the new model"),
    ],
)
def test_grow_head_refuses_weights_that_do_not_fit(
    previous: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        grow_head(previous, fresh, known_labels=3)
