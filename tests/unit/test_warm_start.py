"""Pieces of incremental training that need no Ray: head growth, stable label ids, the lock."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN
from pipelines.data.ownership import changed_owners
from pipelines.errors import ModelError
from pipelines.jobs.nightly import NightlyLockedError, exclusive_lock
from pipelines.model.artifact import LabelSet
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


def test_extended_labels_keep_every_old_id_and_append_new_tenants_sorted() -> None:
    old = LabelSet.from_tenants(["b", "a", "c"])
    grown = old.extended(["z", "a", "d"])  # "b" and "c" absent from recent data: kept
    assert grown.tenants[: len(old)] == old.tenants
    assert grown.tenants[len(old) :] == ("d", "z")


def test_nightly_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    path = tmp_path / "nightly.lock"
    held = exclusive_lock(path)
    held.__enter__()
    try:
        with pytest.raises(NightlyLockedError, match=f"pid {os.getpid()}"), exclusive_lock(path):
            pass
    finally:
        held.__exit__(None, None, None)
    with exclusive_lock(path):  # released
        pass


def owner_counts(days: dict[str, list[tuple[int, str, int]]]) -> pd.DataFrame:
    """service → [(day, tenant, tickets)] as the counts ownership_changes aggregates."""
    start = dt.date(2026, 10, 1)
    return pd.DataFrame(
        [
            {
                "service": service,
                DAY_COLUMN: start + dt.timedelta(days=day),
                LABEL_COLUMN: tenant,
                "rows": rows,
            }
            for service, entries in days.items()
            for day, tenant, rows in entries
        ]
    )


def test_changed_owners_finds_moves_and_ignores_blips_shared_and_stable_services() -> None:
    totals = owner_counts(
        {
            "moved": [(0, "a", 9), (1, "a", 8), (2, "b", 3), (3, "b", 4)],
            "stable": [(0, "a", 5), (1, "a", 5), (2, "a", 5)],
            "blip": [(0, "a", 5), (1, "a", 5), (2, "b", 5)],  # one day is not a change
            "shared": [(0, "a", 5), (0, "b", 5), (1, "b", 5), (1, "a", 5), (2, "b", 9)],
            "thin": [(0, "a", 5), (1, "b", 1), (2, "b", 1)],  # too few tickets for the new owner
        }
    )
    assert changed_owners(totals) == {"moved": "b"}
