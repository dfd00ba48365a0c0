"""How the driver turns actor output into table rows: duplicates within a day, the row shape."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pipelines.contract.columns import REJECT_DUPLICATE_TICKET_ID, REJECT_EMPTY_TITLE
from pipelines.inference.output import _reject_duplicates, _table_rows
from pipelines.inference.schema import BATCH_SCHEMA, TABLE_SCHEMA


def batch(ticket_ids: list[str | None], reasons: list[str | None]) -> pa.Table:
    n = len(ticket_ids)
    given = {
        "ticket_id": ticket_ids,
        "title": ["t"] * n,
        "tenant": ["a"] * n,
        "reject_reason": reasons,
        "path": ["/archive/date=2026-10-01/part-0.parquet"] * n,
        "predicted_tenant": ["b" if reason is None else None for reason in reasons],
        "model_version": ["7"] * n,
    }
    return pa.table({f.name: pa.array(given.get(f.name, [None] * n), f.type) for f in BATCH_SCHEMA})


def test_a_ticket_id_seen_earlier_that_day_is_rejected_once_per_repeat() -> None:
    seen: set[str] = {"T-1"}  # from an earlier batch of the day
    first = _reject_duplicates(
        batch(["T-1", "T-2", "T-2", "T-3"], [None, None, None, REJECT_EMPTY_TITLE]), seen
    )
    assert first["reject_reason"].to_pylist() == [
        REJECT_DUPLICATE_TICKET_ID,
        None,
        REJECT_DUPLICATE_TICKET_ID,
        REJECT_EMPTY_TITLE,
    ]
    assert seen == {"T-1", "T-2"}  # a rejected row does not claim its id
    clean = batch(["T-9"], [None])
    assert _reject_duplicates(clean, seen) is clean


def test_table_rows_carry_the_day_and_the_label_as_current_tenant() -> None:
    day = dt.date(2026, 10, 1)
    rows = _table_rows(batch(["T-1", None], [None, "null_ticket_id"]), day)
    assert rows.schema == TABLE_SCHEMA
    assert rows["date"].to_pylist() == [day, day]
    assert rows["current_tenant"].to_pylist() == ["a", "a"]
    assert rows["reject_reason"].to_pylist() == [None, "null_ticket_id"]
    assert "path" not in rows.column_names
