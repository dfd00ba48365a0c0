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
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.contract.columns import LABEL_COLUMN, REJECT_REASON_COLUMN
from pipelines.contract.rows import SchemaProblem, check_arrow_schema, conform_table, split_valid_rows
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
    problems: list[SchemaProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.rejected

    def add(self, path: str, frame: pd.DataFrame) -> None:
        """Count one file's rows under the row rules."""
        valid, rejected = split_valid_rows(frame)
        self.rows += len(frame)
        self.valid_rows += len(valid)
        self.unresolved_rows += int(valid[LABEL_COLUMN].isna().sum())
        self.tenants.update(valid[LABEL_COLUMN].dropna().unique())
        self.rejected.update(rejected[REJECT_REASON_COLUMN].tolist())
        log.debug("%s: %d rows, %d rejected", path, len(frame), len(rejected))


class Archive:
    """A ticket archive at ``uri`` (local path, ``s3://``, ``gs://``) and the filesystem it lives
    on: its day partitions, their footer checks, and reads of its files."""

    def __init__(self, uri: str, store: ObjectStore | None = None) -> None:
        self.uri = uri
        self.filesystem, self.root = resolve(uri, store)

    def partitions(self, since: dt.date | None = None, until: dt.date | None = None) -> list[Partition]:
        """Day partitions within ``[since, until]`` (inclusive), oldest first."""
        if self.filesystem.get_file_info(self.root).type != pafs.FileType.Directory:
            raise ArchiveError(f"archive {self.uri} does not exist or is not a directory")
        partitions = []
        for entry in self.filesystem.get_file_info(pafs.FileSelector(self.root)):
            day = self._day_of(entry)
            if day is None or (since and day < since) or (until and day > until):
                continue
            files = sorted(
                f.path
                for f in self.filesystem.get_file_info(pafs.FileSelector(entry.path))
                if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            )
            if files:
                partitions.append(Partition(day, tuple(files)))
        return sorted(partitions, key=lambda p: p.day)

    def check(
        self, since: dt.date | None = None, until: dt.date | None = None
    ) -> tuple[list[Partition], list[SchemaProblem]]:
        """Partitions in the window and every schema problem of their files (footers only)."""
        partitions = self.partitions(since, until)
        problems: list[SchemaProblem] = []
        for partition in partitions:
            for path in partition.files:
                try:
                    schema = pq.read_schema(path, filesystem=self.filesystem)
                except (OSError, pa.ArrowException) as exc:
                    problems.append(SchemaProblem(path, None, f"is not a readable Parquet file: {exc}"))
                    continue
                problems.extend(check_arrow_schema(schema, path))
        return partitions, problems

    def num_rows(self, path: str) -> int:
        """Rows of one file, from its footer."""
        return pq.read_metadata(path, filesystem=self.filesystem).num_rows

    def read_file(self, path: str) -> pa.Table:
        """One file of a partition, conformed to the ticket schema (names the file on error)."""
        try:
            table = pq.read_table(path, filesystem=self.filesystem)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"{path}: not a readable Parquet file: {exc}") from None
        return conform_table(table, path)

    def validate(self, since: dt.date | None = None, until: dt.date | None = None) -> ArchiveReport:
        """Every file of the window against the contract: footers, then the row rules."""
        partitions, problems = self.check(since, until)
        report = ArchiveReport(archive=self.uri, days=len(partitions), problems=problems)
        broken = {p.source for p in problems}
        for path in (path for partition in partitions for path in partition.files):
            report.files += 1
            if path not in broken:
                report.add(path, self.read_file(path).to_pandas())
        return report

    @staticmethod
    def _day_of(entry: pafs.FileInfo) -> dt.date | None:
        """The day of a ``date=YYYY-MM-DD`` directory; None (with a warning for anything but
        metadata) for other entries."""
        match = _PARTITION_DIR.match(entry.base_name)
        if entry.type != pafs.FileType.Directory or not match:
            if not entry.base_name.startswith(_METADATA_PREFIXES) and entry.base_name not in _LEGACY_METADATA:
                log.warning("ignoring %s: not a %s=YYYY-MM-DD partition", entry.path, PARTITION_KEY)
            return None
        try:
            return dt.date.fromisoformat(match.group(1))
        except ValueError:
            raise ArchiveError(f"{entry.path}: '{match.group(1)}' is not a valid date") from None
