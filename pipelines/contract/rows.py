"""The ticket contract's rows: the Arrow schemas, schema checks of a file, and the row rules
(a rejected row keeps its reason: rows are counted and kept, never silently dropped)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from pipelines.contract.columns import (
    LABEL_COLUMN,
    OPTIONAL_TEXT_COLUMNS,
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_EMPTY_TITLE,
    REJECT_NULL_CREATED_AT,
    REJECT_NULL_TICKET_ID,
    REJECT_REASON_COLUMN,
    REQUIRED_COLUMNS,
)
from pipelines.errors import ArchiveError

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

# The canonical Arrow schema every reader conforms a file to (column order included).
TICKET_SCHEMA = pa.schema(
    [
        pa.field("ticket_id", pa.string(), nullable=False),
        pa.field("created_at", TIMESTAMP_TYPE, nullable=False),
        pa.field("title", pa.string(), nullable=False),
        *(pa.field(name, pa.string()) for name in OPTIONAL_TEXT_COLUMNS),
        pa.field(LABEL_COLUMN, pa.string()),
    ]
)
# What readers cast every file to: the same columns, nullability left to the row rules.
TICKET_READ_SCHEMA = pa.schema([pa.field(f.name, f.type) for f in TICKET_SCHEMA])


@dataclass(frozen=True)
class SchemaProblem:
    """One column of one file that breaks the contract."""

    source: str
    column: str | None  # None: the problem is the whole file
    problem: str

    def __str__(self) -> str:
        if self.column is None:
            return f"{self.source}: {self.problem}"
        return f"{self.source}: column '{self.column}' {self.problem}"


def _is_string_type(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    )


def check_arrow_schema(schema: pa.Schema, source: str) -> list[SchemaProblem]:
    """Every contract problem of a file's schema: missing required columns and wrong types."""
    problems = [
        SchemaProblem(source, name, "is missing (required)")
        for name in REQUIRED_COLUMNS
        if name not in schema.names
    ]
    for field in TICKET_SCHEMA:
        if field.name not in schema.names:
            continue
        actual = schema.field(field.name).type
        if pa.types.is_null(actual):
            if not field.nullable:
                problems.append(SchemaProblem(source, field.name, "holds only nulls (required)"))
            continue
        if pa.types.is_timestamp(field.type):
            if not pa.types.is_timestamp(actual):
                problems.append(SchemaProblem(source, field.name, f"has type {actual}, expected a timestamp"))
        elif not _is_string_type(actual):
            hint = (
                " (ids are strings even when they look numeric, e.g. '10197')"
                if field.name
                in (
                    LABEL_COLUMN,
                    "ticket_id",
                )
                else ""
            )
            problems.append(SchemaProblem(source, field.name, f"has type {actual}, expected string{hint}"))
    return problems


def conform_table(table: pa.Table, source: str) -> pa.Table:
    """Cast a table to :data:`TICKET_SCHEMA`: missing optional columns become nulls, extra
    columns are dropped, naive timestamps are read as UTC. Raises :class:`ArchiveError` naming
    every problem of the file when it breaks the contract."""
    problems = check_arrow_schema(table.schema, source)
    if problems:
        raise ArchiveError("; ".join(str(p) for p in problems))
    columns = []
    for field in TICKET_SCHEMA:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = column.cast(pa.timestamp(column.type.unit)).cast(
                pa.timestamp(column.type.unit, tz="UTC")
            )
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=TICKET_READ_SCHEMA)


def split_valid_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a conformed batch into (valid rows, rejected rows with a ``reject_reason``).

    Uniqueness of ``ticket_id`` is checked within the batch: the first occurrence is kept.
    """
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    ticket_id = frame["ticket_id"]
    title = frame["title"].astype("string").str.strip()
    reason = reason.mask(
        reason.isna() & (ticket_id.isna() | (ticket_id.astype("string").str.strip() == "")),
        REJECT_NULL_TICKET_ID,
    )
    reason = reason.mask(reason.isna() & frame["created_at"].isna(), REJECT_NULL_CREATED_AT)
    reason = reason.mask(reason.isna() & (title.isna() | (title == "")), REJECT_EMPTY_TITLE)
    duplicated = ticket_id.duplicated(keep="first") & ticket_id.notna()
    reason = reason.mask(reason.isna() & duplicated, REJECT_DUPLICATE_TICKET_ID)
    rejected = reason.notna()
    return (
        frame.loc[~rejected].reset_index(drop=True),
        frame.loc[rejected].assign(**{REJECT_REASON_COLUMN: reason[rejected]}).reset_index(drop=True),
    )
