"""Days of rescore output: the driver gathers each day's scored blocks and commits the day to
the scored table (:mod:`pipelines.inference.table`) once all of its rows are back.

A day is complete when its rows (counted from the Parquet footers) have all come back, scored or
rejected, so a day is never committed short: rows read = rows scored + rows rejected, per day,
and the commit records those counts in its snapshot summary. Rows wait in Ray's object store
(blocks of at most ``ROWS_PER_BLOCK`` rows, which bounds the driver's memory) until the day's
single overwrite writes them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipelines.contract.archive import PARTITION_KEY
from pipelines.contract.columns import (
    LABEL_COLUMN,
    PATH_COLUMN,
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_REASON_COLUMN,
)
from pipelines.inference.schema import CURRENT_TENANT_COLUMN, DATE_COLUMN, TABLE_SCHEMA
from pipelines.inference.summary import PartitionResult, RescoreSummary, compare_with_previous
from pipelines.inference.table import ScoredTable
from pipelines.registry.versions import VersionRef

if TYPE_CHECKING:
    from ray import ObjectRef

log = logging.getLogger(__name__)

# A day's rows are handed to the writer in blocks of at most this many rows: about one data file
# each, and the most the driver holds at once per open day.
ROWS_PER_BLOCK = 250_000


@dataclass
class _OpenDay:
    """A day being scored: its counts so far and its rows, waiting in the object store."""

    result: PartitionResult
    seen: int = 0
    ids: set[str] = field(default_factory=set)
    buffer: list[pa.Table] = field(default_factory=list)
    buffered: int = 0
    blocks: list[ObjectRef[pa.Table]] = field(default_factory=list)


class PartitionWriter:
    """Collects scored blocks per day and commits a day once all its rows are back."""

    def __init__(
        self,
        table: ScoredTable,
        ref: VersionRef,
        summary: RescoreSummary,
        on_commit: Callable[[PartitionResult], None] | None,
    ) -> None:
        self.table = table
        self.ref = ref
        self.summary = summary
        self.on_commit = on_commit
        self.done: set[dt.date] = set()
        self.days: dict[dt.date, _OpenDay] = {}
        self.day_of: dict[str, dt.date] = {}
        self.total = 0

    def open(
        self,
        expected: dict[dt.date, int],
        day_of: dict[str, dt.date],
        skipped: dict[dt.date, tuple[str, ...]],
    ) -> None:
        """(Re)start the given days from nothing; a restart drops what an aborted pass gathered."""
        self.day_of = day_of
        self.total = len(self.done) + len(expected)
        self.days = {
            day: _OpenDay(PartitionResult(day, rows, skipped_files=skipped.get(day, ())))
            for day, rows in expected.items()
        }
        for day, rows in expected.items():
            if rows == 0:  # nothing to wait for
                self._commit(self.days.pop(day))

    def add(self, block: pa.Table) -> None:
        for path in pc.unique(block[PATH_COLUMN]).to_pylist():
            day = self.day_of[path]
            open_day = self.days[day]
            self._add_rows(open_day, block.filter(pc.equal(block[PATH_COLUMN], path)))
            if open_day.seen == open_day.result.rows:
                self._commit(self.days.pop(day))
            elif open_day.seen > open_day.result.rows:
                raise RuntimeError(f"{day}: {open_day.seen} rows came back for {open_day.result.rows} read")

    def finish(self) -> None:
        """Every row read came back: otherwise a day would be committed short."""
        if self.days:
            missing = ", ".join(f"{d} ({o.seen}/{o.result.rows} rows)" for d, o in sorted(self.days.items()))
            raise RuntimeError(f"the pipeline ended before these days were complete: {missing}")

    def _add_rows(self, open_day: _OpenDay, rows: pa.Table) -> None:
        result = open_day.result
        open_day.seen += rows.num_rows
        rows = _reject_duplicates(rows, open_day.ids)
        is_scored = pc.is_null(rows[REJECT_REASON_COLUMN])
        rejected = rows.filter(pc.invert(is_scored))
        result.rejected.update(rejected[REJECT_REASON_COLUMN].to_pylist())
        scored = rows.filter(is_scored)
        result.scored += scored.num_rows
        result.abstained += pc.sum(scored["abstain"]).as_py() or 0
        result.misrouted += pc.sum(scored["misrouted"]).as_py() or 0
        open_day.buffer.append(_table_rows(rows, result.day))
        open_day.buffered += rows.num_rows
        if open_day.buffered >= ROWS_PER_BLOCK:
            _flush(open_day)

    def _commit(self, open_day: _OpenDay) -> None:
        """One overwrite of the day for this version; the summary counts the day only then, so an
        aborted pass does not count it twice."""
        result = open_day.result
        _flush(open_day)
        if open_day.blocks:
            self.table.commit_day(self.ref.version, result.day, open_day.blocks, self._properties(result))
        compare_with_previous(self.table, self.ref.version, result)
        self.summary.partitions.append(result)
        self.done.add(result.day)
        log.info(
            "committed %s=%s [%d/%d]: %d rows, %d scored, %d rejected, %d misrouted",
            PARTITION_KEY,
            result.day,
            len(self.done),
            self.total,
            result.rows,
            result.scored,
            sum(result.rejected.values()),
            result.misrouted,
        )
        if self.on_commit is not None:
            self.on_commit(result)

    def _properties(self, result: PartitionResult) -> dict[str, str]:
        """What the day's snapshot summary records (``oncall.*``)."""
        return {
            "run_id": self.summary.run_id or "",
            "model_name": self.ref.name,
            "model_version": self.ref.version,
            "date": result.day.isoformat(),
            "rows": str(result.rows),
            "scored": str(result.scored),
            "rejected": json.dumps(dict(result.rejected)),
            "skipped_files": json.dumps(list(result.skipped_files)),
            "files": json.dumps(
                sorted(
                    file_name(path)
                    for path, day in self.day_of.items()
                    if day == result.day and path not in result.skipped_files
                )
            ),
        }


def file_name(path: str) -> str:
    """A file's name within its day partition (what a later run compares)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _reject_duplicates(rows: pa.Table, seen: set[str]) -> pa.Table:
    """Rows whose ticket_id came earlier that day get a reason (the actors see one batch at a
    time: uniqueness across the day is checked here)."""
    reasons = rows[REJECT_REASON_COLUMN].to_pylist()
    duplicates = False
    for index, (ticket_id, reason) in enumerate(zip(rows["ticket_id"].to_pylist(), reasons, strict=True)):
        if reason is not None:
            continue
        if ticket_id in seen:
            reasons[index], duplicates = REJECT_DUPLICATE_TICKET_ID, True
        seen.add(ticket_id)
    if not duplicates:
        return rows
    position = rows.schema.get_field_index(REJECT_REASON_COLUMN)
    return rows.set_column(position, REJECT_REASON_COLUMN, pa.array(reasons, pa.string()))


def _table_rows(rows: pa.Table, day: dt.date) -> pa.Table:
    """Actor output as rows of the scored table: the day column, the label as current_tenant."""
    rows = rows.rename_columns({LABEL_COLUMN: CURRENT_TENANT_COLUMN}).append_column(
        DATE_COLUMN, pa.array([day] * rows.num_rows, pa.date32())
    )
    return rows.select(TABLE_SCHEMA.names).cast(TABLE_SCHEMA)


def _flush(open_day: _OpenDay) -> None:
    """Move the buffered rows into the object store as one block."""
    if open_day.buffer:
        open_day.blocks.append(ray.put(pa.concat_tables(open_day.buffer)))
    open_day.buffer, open_day.buffered = [], 0
