"""Row rules: schema checks, conforming tables, valid and rejected rows."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from pipelines.contract.columns import (
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_EMPTY_TITLE,
    REJECT_NULL_CREATED_AT,
    REJECT_NULL_TICKET_ID,
    REJECT_REASON_COLUMN,
)
from pipelines.contract.rows import TICKET_SCHEMA, check_arrow_schema, conform_table, split_valid_rows
from pipelines.errors import ArchiveError

T0 = dt.datetime(2026, 10, 1, 9, 30)


def table(**overrides: list) -> pa.Table:
    columns = {
        "ticket_id": ["a", "b"],
        "created_at": [T0, T0],
        "title": ["disk full", "5xx on api"],
        "tenant": ["10197", None],
    }
    columns.update(overrides)
    return pa.table(columns)


def test_conform_fills_optional_columns_keeps_string_ids_and_reads_naive_time_as_utc() -> None:
    conformed = conform_table(table(extra=[1, 2]), "f.parquet")
    assert conformed.schema.names == TICKET_SCHEMA.names  # extra column dropped, order fixed
    assert conformed.column("tenant").to_pylist() == ["10197", None]
    assert conformed.column("service").null_count == 2
    assert conformed.column("created_at").type == pa.timestamp("us", tz="UTC")
    assert conformed.column("created_at")[0].as_py() == T0.replace(tzinfo=dt.UTC)


def test_dictionary_and_large_strings_are_accepted() -> None:
    source = table(
        title=pa.array(["x", "y"]).dictionary_encode(), ticket_id=pa.array(["a", "b"], pa.large_string())
    )
    assert check_arrow_schema(source.schema, "f") == []
    assert conform_table(source, "f").column("title").to_pylist() == ["x", "y"]


def test_every_problem_of_a_file_is_named_by_file_and_column() -> None:
    broken = pa.table({"ticket_id": [1, 2], "created_at": ["2026-10-01", "x"], "tenant": [10197, 3]})
    problems = [str(p) for p in check_arrow_schema(broken.schema, "day/part-0.parquet")]
    assert "day/part-0.parquet: column 'title' is missing (required)" in problems
    assert any("column 'created_at' has type string, expected a timestamp" in p for p in problems)
    assert any("column 'tenant' has type int64, expected string (ids are strings" in p for p in problems)
    assert any("column 'ticket_id' has type int64" in p for p in problems)
    with pytest.raises(ArchiveError, match="column 'title' is missing"):
        conform_table(broken, "day/part-0.parquet")


def test_all_null_columns_are_fine_when_optional_and_rejected_when_required() -> None:
    source = table(description=pa.nulls(2), title=pa.nulls(2))
    assert [str(p) for p in check_arrow_schema(source.schema, "f")] == [
        "f: column 'title' holds only nulls (required)"
    ]


def test_split_valid_rows_rejects_with_reasons_and_loses_nothing() -> None:
    frame = pd.DataFrame(
        {
            "ticket_id": ["ok-1", None, "  ", "ok-2", "no-time", "ok-1", "ok-3"],
            "created_at": [T0, T0, T0, T0, None, T0, T0],
            "title": ["fine", "fine", "fine", "   ", "fine", "dup", None],
        }
    )
    valid, rejected = split_valid_rows(frame)
    assert valid["ticket_id"].tolist() == ["ok-1"]
    ids = rejected["ticket_id"].fillna("<null>")
    assert list(zip(ids, rejected[REJECT_REASON_COLUMN], strict=True)) == [
        ("<null>", REJECT_NULL_TICKET_ID),
        ("  ", REJECT_NULL_TICKET_ID),
        ("ok-2", REJECT_EMPTY_TITLE),
        ("no-time", REJECT_NULL_CREATED_AT),
        ("ok-1", REJECT_DUPLICATE_TICKET_ID),
        ("ok-3", REJECT_EMPTY_TITLE),
    ]
    assert len(valid) + len(rejected) == len(frame)


def test_text_that_is_not_utf8_is_repaired_and_named(caplog: pytest.LogCaptureFixture) -> None:
    """Parquet strings must be UTF-8; an unchecked writer can store other bytes, on which every
    pandas string operation fails. They become U+FFFD, as lone surrogates do."""
    data = b"disk \xff full" + b"5xx on api"
    offsets = pa.py_buffer(pa.array([0, 11, 21], pa.int32()).buffers()[1])
    titles = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(data)])
    frame = table(title=titles, path=["date=2026-10-01/part-0.parquet"] * 2).to_pandas()

    valid, rejected = split_valid_rows(frame)

    assert valid["title"].tolist() == ["disk \ufffd full", "5xx on api"] and rejected.empty
    assert "date=2026-10-01/part-0.parquet: column(s) 'title' hold bytes that are not UTF-8" in caplog.text
