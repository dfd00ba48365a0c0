"""Layout of a ticket archive: ``<archive>/date=YYYY-MM-DD/*.parquet``, on any pyarrow filesystem.

:class:`Archive` holds the archive's filesystem. Listing and schema checks read only directory
entries and Parquet footers, never the rows, so they are cheap on archives of any size (local,
``s3://``, ``gs://``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.contract.columns import (
    LABEL_COLUMN,
    PATH_COLUMN,
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_REASON_COLUMN,
)
from pipelines.contract.rows import (
    SchemaProblem,
    check_arrow_schema,
    conform_columns,
    conform_table,
    split_valid_rows,
)
from pipelines.contract.storage import ObjectStore
from pipelines.errors import ArchiveError

log = logging.getLogger(__name__)

PARTITION_KEY = "date"
_PARTITION_DIR = re.compile(rf"^{PARTITION_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})$")
# The Parquet convention (pyarrow.dataset, Spark, Hive): names starting with these are metadata.
_METADATA_PREFIXES = ("_", ".")
# Sample archives generated before their manifest became `_manifest.json` carry this one.
_LEGACY_METADATA = frozenset({"manifest.json"})


@dataclass(frozen=True)
class Partition:
    """One day of an archive and its Parquet files (paths on the archive's filesystem)."""

    day: dt.date
    files: tuple[str, ...]


def resolve(uri: str, store: ObjectStore | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path on it for a local path or a URI (``store``: the
    object store's endpoint settings, default the SDK's)."""
    return (store or ObjectStore()).resolve(uri)


def one_line(error: BaseException) -> str:
    """An error's message on one line (pyarrow's can span several, e.g. a thrift failure)."""
    return " ".join(str(error).split())


def partition_dir(archive_uri: str, day: dt.date) -> str:
    return f"{archive_uri.rstrip('/')}/{PARTITION_KEY}={day.isoformat()}"


@dataclass
class ArchiveReport:
    archive: str
    days: int = 0
    files: int = 0
    rows: int = 0
    valid_rows: int = 0
    unresolved_rows: int = 0
    tenants: set[str] = field(default_factory=set)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_files: dict[str, Counter[str]] = field(
        default_factory=dict
    )  # file → its rejected rows by reason
    problems: list[SchemaProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.rejected

    def add(self, path: str, frame: pd.DataFrame, day_ids: set[str]) -> None:
        """Count one file's rows under the row rules. ``day_ids`` holds the ticket ids of the
        day's files counted so far: a ticket id is unique within its day, as rescore checks it."""
        valid, rejected = split_valid_rows(frame.assign(**{PATH_COLUMN: path}))
        repeated = valid["ticket_id"].isin(day_ids)
        if repeated.any():
            again = valid.loc[repeated].assign(**{REJECT_REASON_COLUMN: REJECT_DUPLICATE_TICKET_ID})
            valid, rejected = valid.loc[~repeated], pd.concat([rejected, again], ignore_index=True)
        day_ids.update(valid["ticket_id"])
        self.rows += len(frame)
        self.valid_rows += len(valid)
        self.unresolved_rows += int(valid[LABEL_COLUMN].isna().sum())
        self.tenants.update(valid[LABEL_COLUMN].dropna().unique())
        if len(rejected):
            self.rejected_files[path] = Counter(rejected[REJECT_REASON_COLUMN].tolist())
            self.rejected.update(self.rejected_files[path])
        log.debug("%s: %d rows, %d rejected", path, len(frame), len(rejected))


class Archive:
    """A ticket archive at ``uri`` (local path, ``s3://``, ``gs://``) and the filesystem it lives
    on: its day partitions, their footer checks, and reads of its files."""

    def __init__(self, uri: str, store: ObjectStore | None = None) -> None:
        self.uri = uri
        self.filesystem, self.root = resolve(uri, store)

    def partitions(
        self,
        since: dt.date | None = None,
        until: dt.date | None = None,
        *,
        misnamed: Literal["raise", "skip"] = "raise",
    ) -> list[Partition]:
        """Day partitions within ``[since, until]`` (inclusive), oldest first. A ``date=…``
        directory that is not a date fails the listing, naming it, or with ``misnamed="skip"``
        is left out with a warning (:meth:`check` reports it with the files' problems)."""
        partitions, problems = self._listing(since, until)
        for problem in problems:
            if misnamed == "raise":
                raise ArchiveError(str(problem))
            log.warning("ignoring %s", problem)
        return partitions

    def check(
        self, since: dt.date | None = None, until: dt.date | None = None
    ) -> tuple[list[Partition], list[SchemaProblem]]:
        """Partitions in the window and every problem of the window: misnamed partition
        directories, and each file's schema (footers only)."""
        partitions, problems = self._listing(since, until)
        for partition in partitions:
            for path in partition.files:
                try:
                    schema = pq.read_schema(path, filesystem=self.filesystem)
                except (OSError, pa.ArrowException) as exc:
                    problems.append(
                        SchemaProblem(path, None, f"is not a readable Parquet file: {one_line(exc)}")
                    )
                    continue
                problems.extend(check_arrow_schema(schema, path))
        return partitions, problems

    def num_rows(self, path: str) -> int:
        """Rows of one file, from its footer."""
        return pq.read_metadata(path, filesystem=self.filesystem).num_rows

    def read_columns(self, path: str, names: Sequence[str]) -> pa.Table:
        """Only the columns ``names`` of one file, conformed to the ticket schema (an optional
        column the file lacks comes back as nulls); the file's whole schema is checked first.
        Names the file on error, like :meth:`read_file`."""
        try:
            schema = pq.read_schema(path, filesystem=self.filesystem)
            problems = check_arrow_schema(schema, path)
            present = [name for name in names if name in schema.names]
            table = None if problems else pq.read_table(path, columns=present, filesystem=self.filesystem)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"{path}: not a readable Parquet file: {one_line(exc)}") from None
        if table is None:
            raise ArchiveError("; ".join(map(str, problems)))
        return conform_columns(table, names)

    def read_file(self, path: str) -> pa.Table:
        """One file of a partition, conformed to the ticket schema (names the file on error)."""
        try:
            table = pq.read_table(path, filesystem=self.filesystem)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"{path}: not a readable Parquet file: {one_line(exc)}") from None
        return conform_table(table, path)

    def unreadable(self, error: BaseException, paths: Sequence[str]) -> list[SchemaProblem]:
        """The files behind a reader's error (Ray names the file it failed on in its message):
        those of ``paths`` the message names, else all of them, each confirmed by reading it
        here. Empty when none fails to read: the error was something else."""
        named = [path for path in paths if path in str(error)]
        problems = []
        for path in named or paths:
            try:
                self.read_file(path)
            except ArchiveError as exc:
                problems.append(SchemaProblem(path, None, str(exc).removeprefix(f"{path}: ")))
        return problems

    def validate(self, since: dt.date | None = None, until: dt.date | None = None) -> ArchiveReport:
        """Every file of the window against the contract: footers, then the row rules (a file
        that cannot be read is one problem of the report; problems sorted by file)."""
        partitions, problems = self.check(since, until)
        report = ArchiveReport(archive=self.uri, days=len(partitions), problems=problems)
        broken = {p.source for p in problems}
        for partition in partitions:
            day_ids: set[str] = set()
            for path in partition.files:
                report.files += 1
                if path not in broken:
                    self._validate_file(path, report, day_ids)
        report.problems.sort(key=lambda p: p.source)
        return report

    def _validate_file(self, path: str, report: ArchiveReport, day_ids: set[str]) -> None:
        """Row rules of one file whose footer passed; a file that fails past its footer becomes
        a problem of the report, not the end of the check."""
        try:
            frame = self.read_file(path).to_pandas()
        except ArchiveError as exc:
            report.problems.append(SchemaProblem(path, None, str(exc).removeprefix(f"{path}: ")))
            return
        report.add(path, frame, day_ids)

    def _listing(
        self, since: dt.date | None, until: dt.date | None
    ) -> tuple[list[Partition], list[SchemaProblem]]:
        """Day partitions within the window, and the ``date=…`` directories whose name is not a
        date but may fall in it (ISO dates compare as text: ``date=2026-02-30`` is in February)."""
        if self.filesystem.get_file_info(self.root).type != pafs.FileType.Directory:
            raise ArchiveError(f"archive {self.uri} does not exist or is not a directory")
        partitions: list[Partition] = []
        misnamed: list[SchemaProblem] = []
        for entry in self.filesystem.get_file_info(pafs.FileSelector(self.root)):
            name = self._partition_name(entry)
            if name is None or (since and name < since.isoformat()) or (until and name > until.isoformat()):
                continue
            try:
                day = dt.date.fromisoformat(name)
            except ValueError:
                misnamed.append(SchemaProblem(entry.path, None, f"'{name}' is not a valid date"))
                continue
            files = sorted(
                f.path
                for f in self.filesystem.get_file_info(pafs.FileSelector(entry.path))
                if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            )
            if files:
                partitions.append(Partition(day, tuple(files)))
        return sorted(partitions, key=lambda p: p.day), misnamed

    @staticmethod
    def _partition_name(entry: pafs.FileInfo) -> str | None:
        """The ``YYYY-MM-DD`` of a ``date=YYYY-MM-DD`` directory (not checked to be a date);
        None (with a warning for anything but metadata) for other entries."""
        match = _PARTITION_DIR.match(entry.base_name)
        if entry.type != pafs.FileType.Directory or not match:
            if not entry.base_name.startswith(_METADATA_PREFIXES) and entry.base_name not in _LEGACY_METADATA:
                log.warning("ignoring %s: not a %s=YYYY-MM-DD partition", entry.path, PARTITION_KEY)
            return None
        return match.group(1)
