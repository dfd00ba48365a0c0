"""Ownership changes: a service moves when a new tenant holds it for more than a blip."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN
from pipelines.data.ownership import changed_owners


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
