"""Output layout of ``rescore`` and the atomic commit of each day:

    <out>/model_version=<v>/.tmp-date=YYYY-MM-DD-<uuid>/   written aside, then moved to
    <out>/model_version=<v>/date=YYYY-MM-DD/part-*.parquet  scored rows
                                            _rejected/part-00000.parquet  rejected rows + reason
                                            _SUCCESS        written last: the commit point

A day is complete when its rows (counted from the Parquet footers) have all come back, scored or
rejected, so a day is never committed short. Re-running the same version skips days with
a marker and deletes leftovers (temp dirs, day dirs without a marker) of a killed run, so every
row ends up exactly once. Readers of ``model_version=<v>`` ignore ``_``/``.`` paths and see only
scored rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.contract.archive import PARTITION_KEY, partition_dir
from pipelines.contract.columns import (
    LABEL_COLUMN,
    PATH_COLUMN,
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_REASON_COLUMN,
)
from pipelines.contract.rows import TICKET_READ_SCHEMA, TIMESTAMP_TYPE
from pipelines.inference.summary import MISROUTED_COLUMNS, PartitionResult, RescoreSummary, version_key
from pipelines.registry.versions import VersionRef

log = logging.getLogger(__name__)

VERSION_KEY = "model_version"
MARKER = "_SUCCESS"
REJECTED_DIR = "_rejected"
TEMP_PREFIX = ".tmp-"
# A day's scored rows are written in files of at most this many rows (bounds driver memory).
ROWS_PER_FILE = 250_000

TOP_K_TYPE = pa.list_(pa.struct([pa.field("tenant", pa.string()), pa.field("score", pa.float32())]))
SCORED_SCHEMA = pa.schema(
    [
        pa.field("ticket_id", pa.string()),
        pa.field("created_at", TIMESTAMP_TYPE),
        pa.field("predicted_tenant", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("top_k", TOP_K_TYPE),
        pa.field("abstain", pa.bool_()),
        pa.field("current_tenant", pa.string()),
        pa.field("misrouted", pa.bool_()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("scored_at", TIMESTAMP_TYPE),
    ]
)
REJECTED_SCHEMA = TICKET_READ_SCHEMA.append(pa.field(REJECT_REASON_COLUMN, pa.string()))


@dataclass
class _OpenDay:
    """A day being scored: its rows so far, buffered until the day is complete."""

    result: PartitionResult
    temp_dir: str
    seen: int = 0
    ids: set[str] = field(default_factory=set)
    scored: list[pa.Table] = field(default_factory=list)
    buffered: int = 0
    parts: int = 0
    rejected: list[pa.Table] = field(default_factory=list)
    misrouted: list[pd.DataFrame] = field(default_factory=list)
    services: Counter[str] = field(default_factory=Counter)
    moves: Counter[str] = field(default_factory=Counter)
    previous: dict[str, str] | None = None


class PartitionWriter:
    """Collects scored blocks per day and commits a day once all its rows are back."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        out_root: str,
        version_dir: str,
        ref: VersionRef,
        summary: RescoreSummary,
        misrouted_csv: Path,
        on_commit: Callable[[PartitionResult], None] | None,
    ) -> None:
        self.filesystem = filesystem
        self.version_dir = version_dir
        self.ref = ref
        self.summary = summary
        self.misrouted_csv = misrouted_csv
        self.on_commit = on_commit
        self.previous_dirs = _previous_version_dirs(filesystem, out_root, ref.version)
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
        """(Re)start the given days from nothing; a restart drops what an aborted pass wrote."""
        for day in self.days.values():
            _delete_dir(self.filesystem, day.temp_dir)
        self.day_of = day_of
        self.total = len(self.done) + len(expected)
        self.days = {
            day: _OpenDay(
                PartitionResult(day, rows, skipped_files=skipped.get(day, ())),
                f"{self.version_dir}/{TEMP_PREFIX}{PARTITION_KEY}={day.isoformat()}-{uuid.uuid4().hex[:8]}",
            )
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
        # Uniqueness of ticket_id across the whole day (the actors see one batch at a time).
        reasons = rows[REJECT_REASON_COLUMN].to_pylist()
        duplicates = False
        for index, (ticket_id, reason) in enumerate(zip(rows["ticket_id"].to_pylist(), reasons, strict=True)):
            if reason is not None:
                continue
            if ticket_id in open_day.ids:
                reasons[index], duplicates = REJECT_DUPLICATE_TICKET_ID, True
            open_day.ids.add(ticket_id)
        if duplicates:
            position = rows.schema.get_field_index(REJECT_REASON_COLUMN)
            rows = rows.set_column(position, REJECT_REASON_COLUMN, pa.array(reasons, pa.string()))
        is_scored = pc.is_null(rows[REJECT_REASON_COLUMN])
        rejected = rows.filter(pc.invert(is_scored))
        if rejected.num_rows:
            open_day.rejected.append(rejected.select(REJECTED_SCHEMA.names))
            result.rejected.update(rejected[REJECT_REASON_COLUMN].to_pylist())
        scored = rows.filter(is_scored)
        result.scored += scored.num_rows
        result.abstained += pc.sum(scored["abstain"]).as_py() or 0
        misrouted = scored.filter(scored["misrouted"]).rename_columns({LABEL_COLUMN: "current_tenant"})
        result.misrouted += misrouted.num_rows
        if misrouted.num_rows:
            frame = misrouted.select(MISROUTED_COLUMNS).to_pandas()
            open_day.misrouted.append(frame)
            open_day.services.update(frame["service"].fillna("(no service)"))
            open_day.moves.update(frame["current_tenant"] + " → " + frame["predicted_tenant"])
        self._compare_with_previous(open_day, scored)
        output = scored.rename_columns({LABEL_COLUMN: "current_tenant"}).select(SCORED_SCHEMA.names)
        open_day.scored.append(output.cast(SCORED_SCHEMA))
        open_day.buffered += output.num_rows
        if open_day.buffered >= ROWS_PER_FILE:
            self._flush(open_day)

    def _compare_with_previous(self, open_day: _OpenDay, scored: pa.Table) -> None:
        result = open_day.result
        if open_day.previous is None:
            open_day.previous = {}
            for version, directory in self.previous_dirs:
                day_dir = partition_dir(directory, result.day)
                if _exists(self.filesystem, f"{day_dir}/{MARKER}"):
                    earlier = pq.read_table(
                        day_dir, columns=["ticket_id", "predicted_tenant"], filesystem=self.filesystem
                    )
                    open_day.previous = dict(
                        zip(
                            earlier["ticket_id"].to_pylist(),
                            earlier["predicted_tenant"].to_pylist(),
                            strict=True,
                        )
                    )
                    result.previous_version = version
                    break
        if not open_day.previous:
            return
        for ticket_id, tenant in zip(
            scored["ticket_id"].to_pylist(), scored["predicted_tenant"].to_pylist(), strict=True
        ):
            before = open_day.previous.get(ticket_id)
            if before is not None:
                result.compared += 1
                result.changed += before != tenant

    def _flush(self, open_day: _OpenDay) -> None:
        table = pa.concat_tables(open_day.scored) if open_day.scored else SCORED_SCHEMA.empty_table()
        table = table.sort_by([("created_at", "ascending"), ("ticket_id", "ascending")])  # stable output
        self.filesystem.create_dir(open_day.temp_dir, recursive=True)
        pq.write_table(
            table, f"{open_day.temp_dir}/part-{open_day.parts:05d}.parquet", filesystem=self.filesystem
        )
        open_day.parts += 1
        open_day.scored, open_day.buffered = [], 0

    def _commit(self, open_day: _OpenDay) -> None:
        """Write the rest aside, move it into place, then the marker: a day is there entirely
        or (without its marker) not at all."""
        result = open_day.result
        if open_day.buffered or open_day.parts == 0:
            self._flush(open_day)
        if open_day.rejected:
            self.filesystem.create_dir(f"{open_day.temp_dir}/{REJECTED_DIR}", recursive=True)
            pq.write_table(
                pa.concat_tables(open_day.rejected).cast(REJECTED_SCHEMA),
                f"{open_day.temp_dir}/{REJECTED_DIR}/part-00000.parquet",
                filesystem=self.filesystem,
            )
        final = partition_dir(self.version_dir, result.day)
        _delete_dir(self.filesystem, final)
        _move_dir(self.filesystem, open_day.temp_dir, final)
        marker = {
            "model_name": self.ref.name,
            "model_version": self.ref.version,
            "rows": result.rows,
            "scored": result.scored,
            "rejected": dict(result.rejected),
            "skipped_files": list(result.skipped_files),
            "committed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with self.filesystem.open_output_stream(f"{final}/{MARKER}") as stream:
            stream.write(json.dumps(marker, indent=2).encode() + b"\n")
        # Only now does the day count: an aborted pass must not count it twice.
        if open_day.misrouted:
            frame = pd.concat(open_day.misrouted, ignore_index=True)
            frame.insert(0, "date", result.day.isoformat())
            frame.to_csv(self.misrouted_csv, mode="a", header=not self.misrouted_csv.exists(), index=False)
        self.summary.misrouted_services.update(open_day.services)
        self.summary.misrouted_moves.update(open_day.moves)
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


def committed_days(filesystem: pafs.FileSystem, version_dir: str) -> set[dt.date]:
    """Days of a version's output that carry a marker; leftovers of a killed run (temp dirs,
    days moved into place but without their marker) are deleted."""
    if filesystem.get_file_info(version_dir).type != pafs.FileType.Directory:
        return set()
    committed = set()
    prefix = f"{PARTITION_KEY}="
    for entry in filesystem.get_file_info(pafs.FileSelector(version_dir)):
        if entry.type != pafs.FileType.Directory:
            continue
        if entry.base_name.startswith(TEMP_PREFIX):
            log.info("removing %s, left by an interrupted run", entry.path)
            _delete_dir(filesystem, entry.path)
            continue
        if not entry.base_name.startswith(prefix):
            continue
        try:
            day = dt.date.fromisoformat(entry.base_name.removeprefix(prefix))
        except ValueError:
            continue
        if _exists(filesystem, f"{entry.path}/{MARKER}"):
            committed.add(day)
        else:
            log.info("removing %s: no %s marker (an interrupted commit)", entry.path, MARKER)
            _delete_dir(filesystem, entry.path)
    return committed


def _previous_version_dirs(filesystem: pafs.FileSystem, out_root: str, version: str) -> list[tuple[str, str]]:
    """Outputs of earlier versions under the same root, newest first."""
    if filesystem.get_file_info(out_root).type != pafs.FileType.Directory:
        return []
    prefix = f"{VERSION_KEY}="
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(out_root)):
        name = entry.base_name.removeprefix(prefix)
        is_version_dir = entry.type == pafs.FileType.Directory and entry.base_name.startswith(prefix)
        if is_version_dir and name != version and version_key(name) < version_key(version):
            found.append((name, entry.path))
    return sorted(found, key=lambda item: version_key(item[0]), reverse=True)


def _exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _delete_dir(filesystem: pafs.FileSystem, path: str) -> None:
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)


def _move_dir(filesystem: pafs.FileSystem, source: str, target: str) -> None:
    """One rename where the filesystem has it (local, HDFS); file by file on object stores,
    where the marker written afterwards is what makes the day visible as committed."""
    try:
        filesystem.move(source, target)
        return
    except (OSError, pa.ArrowNotImplementedError):
        pass
    for entry in filesystem.get_file_info(pafs.FileSelector(source, recursive=True)):
        if entry.type == pafs.FileType.File:
            destination = target + entry.path[len(source) :]
            filesystem.create_dir(destination.rsplit("/", 1)[0], recursive=True)
            filesystem.move(entry.path, destination)
    _delete_dir(filesystem, source)
