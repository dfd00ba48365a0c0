"""What a ``rescore`` run reports: per-day results, the run's summary, and what it logs to its run."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from pipelines.config import OncallConfig
from pipelines.inference.schema import CURRENT_TENANT_COLUMN, DATE_COLUMN
from pipelines.inference.table import ScoredTable
from pipelines.registry.tracking import RunLog

MISROUTED_ARTIFACT = "misrouted.csv"
TOP_REPORTED = 10
MISROUTED_COLUMNS = [
    "ticket_id",
    "created_at",
    "service",
    "title",
    CURRENT_TENANT_COLUMN,
    "predicted_tenant",
    "confidence",
]


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class PartitionResult:
    """One committed day: counts, and the comparison with an earlier version's output of it."""

    day: dt.date
    rows: int
    scored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    abstained: int = 0
    misrouted: int = 0
    previous_version: str | None = None
    compared: int = 0  # tickets the previous version scored too
    changed: int = 0  # of those, tickets whose predicted tenant differs
    skipped_files: tuple[str, ...] = ()


@dataclass
class RescoreSummary:
    archive: str
    output: str  # "<table> in <warehouse>"
    model_name: str
    model_version: str
    on_bad_file: str
    partitions: list[PartitionResult] = field(default_factory=list)  # committed by this run
    already_committed: list[dt.date] = field(default_factory=list)
    late_files: dict[dt.date, list[str]] = field(default_factory=dict)  # arrived after the day was scored
    skipped_files: list[SkippedFile] = field(default_factory=list)
    misrouted_services: Counter[str] = field(default_factory=Counter)
    misrouted_moves: Counter[str] = field(default_factory=Counter)  # "current → predicted"
    run_id: str | None = None
    seconds: float = 0.0

    @property
    def rows_read(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def rows_scored(self) -> int:
        return sum(p.scored for p in self.partitions)

    @property
    def rejected(self) -> Counter[str]:
        return sum((p.rejected for p in self.partitions), Counter())

    @property
    def abstained(self) -> int:
        return sum(p.abstained for p in self.partitions)

    @property
    def misrouted(self) -> int:
        return sum(p.misrouted for p in self.partitions)

    @property
    def compared(self) -> int:
        return sum(p.compared for p in self.partitions)

    @property
    def changed(self) -> int:
        return sum(p.changed for p in self.partitions)

    @property
    def previous_versions(self) -> list[str]:
        return sorted({p.previous_version for p in self.partitions if p.previous_version}, key=version_key)

    def as_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {
            "rows_read": self.rows_read,
            "rows_scored": self.rows_scored,
            "rows_rejected": sum(self.rejected.values()),
            "rows_abstained": self.abstained,
            "rows_misrouted": self.misrouted,
            "partitions_scored": len(self.partitions),
            "partitions_already_committed": len(self.already_committed),
            "partitions_rescored_for_late_files": len(self.late_files),
            "files_skipped": len(self.skipped_files),
            "predictions_compared": self.compared,
            "predictions_changed": self.changed,
            "seconds": self.seconds,
        }
        metrics.update({f"rows_rejected_{reason}": n for reason, n in self.rejected.items()})
        if self.seconds > 0:
            metrics["rows_per_second"] = self.rows_read / self.seconds
        return metrics

    def by_date(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "date": p.day.isoformat(),
                    "rows": p.rows,
                    "scored": p.scored,
                    "rejected": sum(p.rejected.values()),
                    "abstained": p.abstained,
                    "misrouted": p.misrouted,
                    "previous_version": p.previous_version or "",
                    "changed": p.changed,
                    "compared": p.compared,
                }
                for p in sorted(self.partitions, key=lambda p: p.day)
            ],
            columns=[
                "date",
                "rows",
                "scored",
                "rejected",
                "abstained",
                "misrouted",
                "previous_version",
                "changed",
                "compared",
            ],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "output": self.output,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "on_bad_file": self.on_bad_file,
            "metrics": self.as_metrics(),
            "rejected": dict(self.rejected),
            "by_date": self.by_date().to_dict("records"),
            "already_committed": [day.isoformat() for day in self.already_committed],
            "late_files": {day.isoformat(): files for day, files in sorted(self.late_files.items())},
            "skipped_files": [asdict(s) for s in self.skipped_files],
            "top_misrouted_services": self.misrouted_services.most_common(TOP_REPORTED),
            "top_misroutes": self.misrouted_moves.most_common(TOP_REPORTED),
        }


def version_key(version: str) -> tuple[int, str]:
    """Orders registry versions numerically (a non-numeric one sorts first)."""
    return (int(version), "") if version.isdigit() else (-1, version)


def compare_with_previous(table: ScoredTable, version: str, result: PartitionResult) -> None:
    """Compare a committed day with the newest earlier version that has it in the table: tickets
    both scored, and how many of them changed tenant."""
    earlier = [v for v in table.versions_of(result.day) if version_key(v) < version_key(version)]
    if not earlier:
        return
    previous = max(earlier, key=version_key)
    columns = ("ticket_id", "predicted_tenant")
    before = table.read(previous, [result.day], columns=columns)
    after = table.read(version, [result.day], columns=columns)
    both = after.join(before, "ticket_id", join_type="inner", right_suffix="_before")
    result.previous_version = previous
    result.compared = both.num_rows
    result.changed = both.num_rows - (
        pc.sum(pc.equal(both["predicted_tenant"], both["predicted_tenant_before"])).as_py() or 0
    )


def report_misroutes(table: ScoredTable, summary: RescoreSummary, misrouted_csv: Path) -> None:
    """The misrouted tickets of the days this run committed, read back from the table: the CSV,
    the most misrouted services and ``current → predicted`` moves."""
    from pyiceberg.expressions import EqualTo

    days = [p.day for p in summary.partitions]
    if not days:
        return
    rows = table.read(
        summary.model_version,
        days,
        columns=(DATE_COLUMN, *MISROUTED_COLUMNS),
        where=EqualTo("misrouted", True),
    )
    frame = rows.to_pandas().sort_values([DATE_COLUMN, "created_at", "ticket_id"], ignore_index=True)
    frame[DATE_COLUMN] = frame[DATE_COLUMN].map(dt.date.isoformat)
    summary.misrouted_services.update(frame["service"].fillna("(no service)"))
    summary.misrouted_moves.update(frame[CURRENT_TENANT_COLUMN] + " → " + frame["predicted_tenant"])
    frame.to_csv(misrouted_csv, index=False)


def log_params(
    run: RunLog,
    config: OncallConfig,
    summary: RescoreSummary,
    *,
    alias: str,
    since: dt.date | None,
    until: dt.date | None,
) -> None:
    """What the run scored, with what, and the ``rescore.*`` settings."""
    run.params(config.rescore.model_dump(exclude={"catalog_uri"}), prefix="rescore")  # may hold a password
    run.params(
        {
            "archive": summary.archive,
            "output": summary.output,
            "model_name": summary.model_name,
            "model_version": summary.model_version,
            "alias": alias,
            "since": str(since or ""),
            "until": str(until or ""),
            "on_bad_file": summary.on_bad_file,
        }
    )


def log_metrics(run: RunLog, summary: RescoreSummary) -> None:
    """The run's counts so far (also logged when it fails)."""
    run.metrics(summary.as_metrics())


def log_reports(run: RunLog, summary: RescoreSummary, misrouted_csv: Path) -> None:
    """The summary, per-day counts and the misrouted tickets (CSV) of a finished run."""
    folder = misrouted_csv.parent
    if not misrouted_csv.exists():
        pd.DataFrame(columns=[DATE_COLUMN, *MISROUTED_COLUMNS]).to_csv(misrouted_csv, index=False)
    (folder / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
    summary.by_date().to_csv(folder / "by_date.csv", index=False)
    for name in (MISROUTED_ARTIFACT, "summary.json", "by_date.csv"):
        run.artifact(folder / name)
