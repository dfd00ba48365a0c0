"""Layout of a ticket archive: ``<archive>/date=YYYY-MM-DD/*.parquet``, on any pyarrow filesystem.

Listing and schema checks read only directory entries and Parquet footers, never the rows, so
they are cheap on archives of any size (local, ``s3://``, ``gs://``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.contract.columns import LABEL_COLUMN, REJECT_REASON_COLUMN
from pipelines.contract.rows import SchemaProblem, check_arrow_schema, conform_table, split_valid_rows
from pipelines.errors import ArchiveError

log = logging.getLogger(__name__)

PARTITION_KEY = "date"
_PARTITION_DIR = re.compile(rf"^{PARTITION_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})$")


@dataclass(frozen=True)
class Partition:
    """One day of an archive and its Parquet files (paths on ``filesystem``)."""

    day: dt.date
    files: tuple[str, ...]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path on it for a local path or a URI."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        # A relative local path: absolute, since Ray tasks do not share the driver's cwd.
        return pafs.LocalFileSystem(), str(Path(uri).resolve())


def partition_dir(archive_uri: str, day: dt.date) -> str:
    return f"{archive_uri.rstrip('/')}/{PARTITION_KEY}={day.isoformat()}"


def list_partitions(
    archive_uri: str, since: dt.date | None = None, until: dt.date | None = None
) -> list[Partition]:
    """Day partitions of an archive within ``[since, until]`` (inclusive), oldest first."""
    filesystem, root = resolve(archive_uri)
    info = filesystem.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ArchiveError(f"archive {archive_uri} does not exist or is not a directory")
    partitions = []
    for entry in filesystem.get_file_info(pafs.FileSelector(root)):
        match = _PARTITION_DIR.match(entry.base_name)
        if entry.type != pafs.FileType.Directory or not match:
            if not entry.base_name.startswith((".", "_")) and entry.base_name != "manifest.json":
                log.warning("ignoring %s: not a %s=YYYY-MM-DD partition", entry.path, PARTITION_KEY)
            continue
        try:
            day = dt.date.fromisoformat(match.group(1))
        except ValueError:
            raise ArchiveError(f"{entry.path}: '{match.group(1)}' is not a valid date") from None
        if (since and day < since) or (until and day > until):
            continue
        files = sorted(
            f.path
            for f in filesystem.get_file_info(pafs.FileSelector(entry.path))
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
        )
        if files:
            partitions.append(Partition(day, tuple(files)))
    return sorted(partitions, key=lambda p: p.day)


def check_archive(
    archive_uri: str, since: dt.date | None = None, until: dt.date | None = None
) -> tuple[list[Partition], list[SchemaProblem]]:
    """Partitions in the window and every schema problem of their files (footers only)."""
    filesystem, _ = resolve(archive_uri)
    partitions = list_partitions(archive_uri, since, until)
    problems: list[SchemaProblem] = []
    for partition in partitions:
        for path in partition.files:
            try:
                schema = pq.read_schema(path, filesystem=filesystem)
            except (OSError, pa.ArrowException) as exc:
                problems.append(SchemaProblem(path, None, f"is not a readable Parquet file: {exc}"))
                continue
            problems.extend(check_arrow_schema(schema, path))
    return partitions, problems


def read_partition_file(path: str, filesystem: pafs.FileSystem) -> pa.Table:
    """One Parquet file of a partition, conformed to the ticket schema (names the file on error)."""
    try:
        table = pq.read_table(path, filesystem=filesystem)
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveError(f"{path}: not a readable Parquet file: {exc}") from None
    return conform_table(table, path)


log = logging.getLogger(__name__)


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
    problems: list[SchemaProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.rejected


def validate_archive(
    archive_uri: str, since: dt.date | None = None, until: dt.date | None = None
) -> ArchiveReport:
    filesystem, _ = resolve(archive_uri)
    partitions, problems = check_archive(archive_uri, since, until)
    report = ArchiveReport(archive=archive_uri, days=len(partitions), problems=problems)
    broken = {p.source for p in problems}
    for partition in partitions:
        for path in partition.files:
            report.files += 1
            if path in broken:
                continue
            frame = read_partition_file(path, filesystem).to_pandas()
            valid, rejected = split_valid_rows(frame)
            report.rows += len(frame)
            report.valid_rows += len(valid)
            report.unresolved_rows += int(valid[LABEL_COLUMN].isna().sum())
            report.tenants.update(valid[LABEL_COLUMN].dropna().unique())
            report.rejected.update(rejected[REJECT_REASON_COLUMN].tolist())
            log.debug("%s: %d rows, %d rejected", path, len(frame), len(rejected))
    return report
