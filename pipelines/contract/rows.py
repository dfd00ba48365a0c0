"""The ticket contract's rows: the Arrow schemas, schema checks of a file, and the row rules
(a rejected row keeps its reason: rows are counted and kept, never silently dropped)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from pipelines.contract.columns import (
    LABEL_COLUMN,
    OPTIONAL_TEXT_COLUMNS,
    PATH_COLUMN,
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_EMPTY_TITLE,
    REJECT_NULL_CREATED_AT,
    REJECT_NULL_TICKET_ID,
    REJECT_REASON_COLUMN,
    REQUIRED_COLUMNS,
)
from pipelines.errors import ArchiveError

log = logging.getLogger(__name__)

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
    return conform_columns(table, TICKET_READ_SCHEMA.names)


def conform_columns(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """``names`` of a table whose schema passed :func:`check_arrow_schema`, cast to their
    contract types (a column the table lacks becomes nulls), in that order."""
    fields = [TICKET_READ_SCHEMA.field(name) for name in names]
    columns = []
    for field in fields:
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
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def repair_utf8(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with each byte sequence of its string columns that is not UTF-8 replaced by
    U+FFFD, as :func:`~pipelines.contract.text.repair_text` does for lone surrogates. Parquet
    strings must be UTF-8 but a writer that does not check can store anything, and pandas fails
    on the first operation over such a column. A warning names the column (and the files, when
    the frame has a ``path`` column)."""
    repaired = {}
    for name in frame.columns:
        column = frame[name]
        if getattr(column.dtype, "storage", None) != "pyarrow":
            continue
        strings = column.array.__arrow_array__()
        try:
            strings.validate(full=True)
        except pa.ArrowInvalid:
            values = [
                None if v is None else v.decode("utf-8", "replace")
                for v in strings.cast(pa.binary()).to_pylist()
            ]
            repaired[name] = pd.Series(values, index=frame.index, dtype=column.dtype)
    if not repaired:
        return frame
    files = sorted(set(frame[PATH_COLUMN])) if PATH_COLUMN in frame.columns else []
    log.warning(
        "%scolumn(s) %s hold bytes that are not UTF-8: replaced by U+FFFD",
        f"{', '.join(files)}: " if files else "",
        ", ".join(f"'{name}'" for name in repaired),
    )
    return frame.assign(**repaired)


def split_valid_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a conformed batch into (valid rows, rejected rows with a ``reject_reason``); text
    that is not UTF-8 is repaired first (:func:`repair_utf8`).

    Uniqueness of ``ticket_id`` is checked within the batch: the first occurrence is kept.
    """
    frame = repair_utf8(frame)
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
