"""Check an archive against the ticket contract: schema problems by file and column, and rows
that would be rejected, counted by reason. Reads one day's file at a time."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field

from pipelines.archive import check_archive, read_partition_file, resolve
from pipelines.schema import LABEL_COLUMN, REJECT_REASON_COLUMN, SchemaProblem, split_valid_rows

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
