"""The scored table: an Apache Iceberg table in a SQL catalog, one atomic commit per
(model version, day).

    catalog   rescore.catalog_uri: SQLite (default <out>/catalog.db; <data_dir>/scored-catalog.db
              for an object-store out) or PostgreSQL; catalog name ``oncall``
    warehouse rescore.out: a local directory or s3://bucket/prefix (data files and metadata)
    table     rescore.table (default oncall.scored_tickets), partitioned by identity
              (model_version, date): a day of a version is whole data files

Protocol. A day of a version is written by Ray Data's ``write_iceberg`` as one overwrite
(delete ``model_version = v AND date = d``, append the day's rows) in one catalog commit whose
snapshot summary carries the run id and the day's counts (``oncall.*``). The catalog's
compare-and-swap of the metadata pointer is the commit point: a reader sees the whole day or
none of it, on a local disk and on object storage alike; data files of a run killed before its
commit are in no snapshot, so no reader sees them. A day is committed for a version when the
table holds rows of it (scored or rejected) and every file now in the day's partition is among
the files its commit recorded (``oncall.files``): a file that arrives in a day already scored
makes the next run score the whole day again. Deleting a day's rows
(``table.delete("model_version == '3' AND date == '2026-10-01'")``) makes the next run score it
again too.

Concurrency. pyiceberg retries a commit that lost a race to another one (4 times, backing off)
after re-validating it on the new snapshot: a commit of another day goes through, while a commit
of a (version, day) that another run added meanwhile fails validation. That run then stops with
:class:`ScoredTableError` naming the table and day; nothing of its day was committed and the
other run's copy stays, so no row is lost or doubled.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.config import OncallConfig
from pipelines.contract.columns import REJECT_REASON_COLUMN
from pipelines.contract.storage import is_remote
from pipelines.errors import OncallError
from pipelines.inference.schema import DATE_COLUMN, PARTITION_COLUMNS, TABLE_SCHEMA, VERSION_COLUMN

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table
    from ray import ObjectRef

log = logging.getLogger(__name__)

CATALOG_NAME = "oncall"  # the catalog_name column of the SQL catalog's rows
SNAPSHOT_PREFIX = "oncall."  # snapshot summary properties written with each day


class ScoredTableError(OncallError):
    """The scored table cannot be opened or a day's commit lost to a concurrent run."""


def catalog_uri(config: OncallConfig, out: str) -> str:
    """The configured catalog, else SQLite beside a local warehouse (so that an output root is
    self-contained), or under the data dir for an object-store warehouse."""
    if config.rescore.catalog_uri:
        return config.rescore.catalog_uri
    if is_remote(out):
        return f"sqlite:///{config.data_dir.resolve()}/scored-catalog.db"
    return f"sqlite:///{_local_path(out)}/catalog.db"


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser().resolve()


def _warehouse(out: str) -> str:
    """The warehouse as pyiceberg wants it: a URI (``file:///…`` for a local directory)."""
    return out.rstrip("/") if is_remote(out) else _local_path(out).as_uri()


@dataclass(frozen=True)
class ScoredTable:
    """Where the scored table lives and the catalog properties that reach it (the catalog URI may
    hold a password: never logged)."""

    identifier: str
    warehouse: str
    properties: dict[str, str] = field(repr=False)

    @classmethod
    def open(cls, config: OncallConfig, out: str | None = None) -> ScoredTable:
        """The table under ``out`` (default ``rescore.out``), created with its namespace when
        missing; fails when the catalog already has it somewhere else."""
        out = out or config.rescore_out
        if not is_remote(out):
            _local_path(out).mkdir(parents=True, exist_ok=True)  # SQLite creates no folders
        table = cls(
            identifier=config.rescore.table,
            warehouse=_warehouse(out),
            properties={
                "type": "sql",
                "uri": catalog_uri(config, out),
                "warehouse": _warehouse(out),
                **config.object_store.pyiceberg_properties(),
            },
        )
        location = table._create_or_load().location().rstrip("/")
        if not location.startswith(f"{table.warehouse}/"):
            raise ScoredTableError(
                f"table {table.identifier} of the catalog lives at {location}, not under {table.warehouse}: "
                "give the rescore.out it was created with, or another rescore.table"
            )
        return table

    def __str__(self) -> str:
        return f"{self.identifier} in {self.warehouse}"

    @cached_property
    def catalog(self) -> Catalog:
        """One catalog (one SQLAlchemy engine and its connection pool) per table object."""
        from pyiceberg.catalog import load_catalog

        return load_catalog(CATALOG_NAME, **self.properties)

    def load(self) -> Table:
        return self.catalog.load_table(self.identifier)

    def _create_or_load(self) -> Table:
        """Create namespace and table (schema and partition spec in one commit); a concurrent run
        creating them first is fine."""
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

        catalog = self.catalog
        try:
            return catalog.load_table(self.identifier)
        except NoSuchTableError:
            pass
        catalog.create_namespace_if_not_exists(self.identifier.rsplit(".", 1)[0])
        try:
            creation = catalog.create_table_transaction(self.identifier, schema=TABLE_SCHEMA)
            with creation.update_spec() as spec:
                for column in PARTITION_COLUMNS:
                    spec.add_identity(column)
            creation.commit_transaction()
            log.info("created the scored table %s", self)
        except TableAlreadyExistsError:
            pass
        return catalog.load_table(self.identifier)

    def committed_days(self, version: str) -> set[dt.date]:
        """Days that hold rows of ``version`` (read from the manifests, not the data)."""
        return {day for v, day in self._partitions(_equal(VERSION_COLUMN, version)) if v == version}

    def scored_files(self, version: str) -> dict[dt.date, frozenset[str]]:
        """The archive files (names within the day's partition) each committed day of
        ``version`` was scored from, as its last commit recorded them (``oncall.files``). A day
        committed before files were recorded, or whose snapshot has expired, is absent."""
        recorded: dict[dt.date, frozenset[str]] = {}
        for snapshot in sorted(self.load().snapshots(), key=lambda s: s.sequence_number or 0):
            summary = snapshot.summary
            if summary is None or summary.get(f"{SNAPSHOT_PREFIX}model_version") != version:
                continue
            files, day = summary.get(f"{SNAPSHOT_PREFIX}files"), summary.get(f"{SNAPSHOT_PREFIX}date")
            if files is not None and day is not None:
                recorded[dt.date.fromisoformat(day)] = frozenset(json.loads(files))
        return recorded

    def versions_of(self, day: dt.date) -> set[str]:
        """Versions that hold rows of ``day``."""
        return {v for v, d in self._partitions(_equal(DATE_COLUMN, day.isoformat())) if d == day}

    def _partitions(self, row_filter: BooleanExpression) -> set[tuple[str, dt.date]]:
        from pyiceberg.utils.datetime import days_to_date

        table = self.load()
        names = [field.name for field in table.spec().fields]
        version_at, date_at = names.index(VERSION_COLUMN), names.index(DATE_COLUMN)
        return {
            (task.file.partition[version_at], days_to_date(task.file.partition[date_at]))
            for task in table.scan(row_filter=row_filter).plan_files()
            if task.file.record_count > 0
        }

    def read(
        self,
        version: str,
        days: Iterable[dt.date] | None = None,
        *,
        rejected: bool = False,
        columns: Iterable[str] | None = None,
        where: BooleanExpression | None = None,
    ) -> pa.Table:
        """Scored rows of a version (``rejected``: its rejected rows instead), of ``days`` (all
        when None), filtered by ``where`` too."""
        from pyiceberg.expressions import And, In, IsNull, NotNull

        row_filter: BooleanExpression = And(
            _equal(VERSION_COLUMN, version),
            NotNull(REJECT_REASON_COLUMN) if rejected else IsNull(REJECT_REASON_COLUMN),
        )
        if days is not None:
            row_filter = And(row_filter, In(DATE_COLUMN, {day.isoformat() for day in days}))
        if where is not None:
            row_filter = And(row_filter, where)
        selected = tuple(columns or ("*",))
        read = self.load().scan(row_filter=row_filter, selected_fields=selected).to_arrow()
        return read if columns is None else read.select(list(selected))  # the scan keeps table order

    def commit_day(
        self, version: str, day: dt.date, blocks: list[ObjectRef[pa.Table]], properties: dict[str, Any]
    ) -> None:
        """Replace the rows of (``version``, ``day``) by ``blocks`` in one commit whose snapshot
        summary carries ``properties`` (prefixed ``oncall.``)."""
        import ray.data
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from ray.data import SaveMode
        from ray.data.expressions import col

        try:
            with warnings.catch_warnings():
                # The first commit of a day deletes nothing, which pyiceberg warns about.
                warnings.filterwarnings("ignore", message="Delete operation did not match any records")
                ray.data.from_arrow_refs(blocks).write_iceberg(
                    self.identifier,
                    catalog_kwargs={"name": CATALOG_NAME, **self.properties},
                    snapshot_properties={f"{SNAPSHOT_PREFIX}{k}": str(v) for k, v in properties.items()},
                    mode=SaveMode.OVERWRITE,
                    overwrite_filter=(col(VERSION_COLUMN) == version) & (col(DATE_COLUMN) == day.isoformat()),
                )
        except ValidationException as exc:
            raise ScoredTableError(
                f"{self}: another run committed {VERSION_COLUMN}={version} {DATE_COLUMN}={day} while this run "
                "was writing it (two rescore runs of one version at once, or a delete of that day); this run "
                "stopped without writing that day, the days it committed stay, and a re-run skips what is "
                "committed"
            ) from exc
        except CommitFailedException as exc:
            raise ScoredTableError(
                f"{self}: {VERSION_COLUMN}={version} {DATE_COLUMN}={day} was not committed: the table "
                f"kept changing under concurrent commits ({exc}); re-run to resume"
            ) from exc


def _equal(column: str, value: str) -> BooleanExpression:
    from pyiceberg.expressions import EqualTo

    return EqualTo(column, value)
