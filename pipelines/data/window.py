"""Ray Data path of training: stream the window's partitions, validate, build text, split by
time, tokenize once per actor.

Nothing here reads a whole archive into the driver: the driver only sees per-day counts and
the (small) test split it evaluates on.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import ray.data
import ray.exceptions

from pipelines.contract.archive import PARTITION_KEY, Archive
from pipelines.contract.columns import (
    DAY_COLUMN,
    LABEL_COLUMN,
    PATH_COLUMN,
    REJECT_REASON_COLUMN,
    TEXT_COLUMN,
)
from pipelines.contract.rows import TICKET_READ_SCHEMA, SchemaProblem, split_valid_rows
from pipelines.contract.storage import ObjectStore
from pipelines.contract.text import TextBuilder
from pipelines.errors import ArchiveError
from pipelines.model.artifact import LabelSet

log = logging.getLogger(__name__)
_DAY_IN_PATH = re.compile(rf"{PARTITION_KEY}=(\d{{4}}-\d{{2}}-\d{{2}})")
PREPARED_COLUMNS = ["ticket_id", DAY_COLUMN, TEXT_COLUMN, "service", LABEL_COLUMN, REJECT_REASON_COLUMN]


@dataclass(frozen=True)
class TimeSplit:
    """Days of a window: the newest are test, the ones before validation, the rest training."""

    train: tuple[dt.date, ...]
    validation: tuple[dt.date, ...]
    test: tuple[dt.date, ...]

    @classmethod
    def from_days(cls, days: list[dt.date], validation_days: int, test_days: int) -> TimeSplit:
        days = sorted(days)
        if len(days) <= validation_days + test_days:
            raise ArchiveError(
                f"the window holds {len(days)} day(s); training needs more than "
                f"validation_days + test_days = {validation_days + test_days}"
            )
        test_start = len(days) - test_days
        validation_start = test_start - validation_days
        return cls(
            tuple(days[:validation_start]), tuple(days[validation_start:test_start]), tuple(days[test_start:])
        )

    def of(self, day: dt.date) -> str:
        if day in self.test:
            return "test"
        return "validation" if day in self.validation else "train"


@dataclass
class WindowStats:
    """What the window held, so that nothing is dropped without being counted."""

    rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    unresolved: int = 0
    labelled: Counter[str] = field(default_factory=Counter)  # by split
    unseen_tenant: Counter[str] = field(default_factory=Counter)  # validation/test rows of unknown tenants
    train_tenant_counts: Counter[str] = field(default_factory=Counter)

    def as_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {"rows_read": self.rows, "rows_unresolved": self.unresolved}
        metrics.update({f"rows_rejected_{reason}": n for reason, n in self.rejected.items()})
        metrics.update({f"rows_{split}": n for split, n in self.labelled.items()})
        metrics.update({f"rows_{split}_unseen_tenant": n for split, n in self.unseen_tenant.items()})
        return metrics


def read_window(
    archive_uri: str,
    builder: TextBuilder,
    since: dt.date | None,
    until: dt.date | None,
    store: ObjectStore | None = None,
) -> ray.data.Dataset:
    """Stream the window's partitions (footers checked first, so a bad file is named before
    any work starts) into prepared rows: ``PREPARED_COLUMNS``, invalid rows kept with a reason."""
    archive = Archive(archive_uri, store)
    partitions, problems = archive.check(since, until)
    if problems:
        raise contract_error(problems)
    if not partitions:
        window = f"between {since or 'the start'} and {until or 'the end'}"
        raise ArchiveError(f"archive {archive_uri} has no partitions {window}")
    files = [path for partition in partitions for path in partition.files]
    log.info("reading %d file(s) of %d day(s) from %s", len(files), len(partitions), archive_uri)
    dataset = ray.data.read_parquet(
        files, filesystem=archive.filesystem, partitioning=None, include_paths=True, schema=TICKET_READ_SCHEMA
    )
    return dataset.map_batches(
        PrepareTickets, fn_constructor_kwargs={"builder": builder}, batch_format="pandas"
    )


def contract_error(problems: list[SchemaProblem]) -> ArchiveError:
    """Training refuses a window that breaks the ticket contract: every problem, one per line."""
    return ArchiveError("the archive breaks the ticket contract:\n  " + "\n  ".join(map(str, problems)))


@contextmanager
def unreadable_files_named(
    archive_uri: str, since: dt.date | None, until: dt.date | None, store: ObjectStore | None = None
) -> Iterator[None]:
    """Run the reads of a window (``materialize``, ``to_pandas``) inside: a file that fails
    past its footer (Ray keeps the pyarrow error's type) becomes an :class:`ArchiveError`
    naming it, instead of Ray's traceback."""
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        if not isinstance(exc, OSError | pa.ArrowException):
            raise
        archive = Archive(archive_uri, store)
        problems = archive.unreadable(
            exc, [path for p in archive.partitions(since, until) for path in p.files]
        )
        if not problems:
            raise
        raise contract_error(problems) from None


class PrepareTickets:
    """Row rules of the contract, the day from the partition path, and the model text."""

    def __init__(self, builder: TextBuilder) -> None:
        self.builder = builder

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        valid, rejected = split_valid_rows(batch)
        frame = pd.concat([valid.assign(**{REJECT_REASON_COLUMN: None}), rejected], ignore_index=True)
        frame[DAY_COLUMN] = frame[PATH_COLUMN].map(_day_of_path)
        frame[TEXT_COLUMN] = self.builder.build_many(frame)
        return frame[PREPARED_COLUMNS]


class OverrideLabels:
    """Labels given through the feedback endpoint replace the archive's for the same ticket
    (and resolve tickets the archive left without an owner)."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self.overrides = overrides

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        given = batch["ticket_id"].map(self.overrides)
        batch[LABEL_COLUMN] = given.where(given.notna(), batch[LABEL_COLUMN])
        return batch


def with_label_overrides(prepared: ray.data.Dataset, overrides: dict[str, str]) -> ray.data.Dataset:
    if not overrides:
        return prepared
    return prepared.map_batches(
        OverrideLabels, fn_constructor_kwargs={"overrides": overrides}, batch_format="pandas"
    )


def replay_sample(
    archive_uri: str,
    builder: TextBuilder,
    before: dt.date,
    rows: int,
    overrides: dict[str, str],
    seed: int,
    store: ObjectStore | None = None,
) -> ray.data.Dataset | None:
    """About ``rows`` valid, labelled tickets drawn uniformly from the days before ``before``:
    trained on next to the new days, they keep stable tenants from being forgotten."""
    until = before - dt.timedelta(days=1)
    if rows <= 0 or not Archive(archive_uri, store).partitions(until=until):
        return None
    with unreadable_files_named(archive_uri, None, until, store):
        labelled = valid_labelled(
            with_label_overrides(read_window(archive_uri, builder, None, until, store), overrides)
        ).materialize()
    available = labelled.count()
    if available == 0:
        return None
    log.info("replaying %d of %d labelled tickets from before %s", min(rows, available), available, before)
    return labelled if available <= rows else labelled.random_sample(rows / available, seed=seed)


def _day_of_path(path: str) -> dt.date:
    match = _DAY_IN_PATH.search(path)
    if match is None:  # Archive.partitions only yields date=… paths
        raise ArchiveError(f"{path} is not inside a {PARTITION_KEY}=YYYY-MM-DD partition")
    return dt.date.fromisoformat(match.group(1))


def count_window(prepared: ray.data.Dataset) -> pd.DataFrame:
    """Rows per (day, tenant, reject reason), aggregated per block then on the driver."""

    def counts(batch: pd.DataFrame) -> pd.DataFrame:
        keys = batch[[DAY_COLUMN, LABEL_COLUMN, REJECT_REASON_COLUMN]].astype(object)
        keys = keys.where(keys.notna(), "")
        return keys.value_counts().rename("rows").reset_index()

    per_block = prepared.map_batches(counts, batch_format="pandas").to_pandas()
    return per_block.groupby([DAY_COLUMN, LABEL_COLUMN, REJECT_REASON_COLUMN], as_index=False)["rows"].sum()


def summarise(counts: pd.DataFrame, split: TimeSplit, labels: LabelSet) -> WindowStats:
    stats = WindowStats(rows=int(counts["rows"].sum()))
    known = set(labels.tenants)
    for row in counts.itertuples(index=False):
        reason, tenant, rows = getattr(row, REJECT_REASON_COLUMN), getattr(row, LABEL_COLUMN), int(row.rows)
        if reason:
            stats.rejected[reason] += rows
        elif not tenant:
            stats.unresolved += rows
        else:
            part = split.of(getattr(row, DAY_COLUMN))
            stats.labelled[part] += rows
            if part == "train":
                stats.train_tenant_counts[tenant] += rows
            elif tenant not in known:
                stats.unseen_tenant[part] += rows
    return stats


def train_labels(counts: pd.DataFrame, split: TimeSplit) -> LabelSet:
    """Tenants with at least one valid labelled ticket in the training days."""
    train_rows = counts[
        (counts[REJECT_REASON_COLUMN] == "")
        & (counts[LABEL_COLUMN] != "")
        & counts[DAY_COLUMN].isin(split.train)
    ]
    if train_rows.empty:
        raise ArchiveError("the training days hold no resolved tickets (every tenant is null)")
    return LabelSet.from_tenants(train_rows[LABEL_COLUMN])


def valid_labelled(prepared: ray.data.Dataset, days: Collection[dt.date] | None = None) -> ray.data.Dataset:
    """Prepared rows that are trained and evaluated on: no reject reason and a tenant label
    (of ``days`` only, when given). The one place this row rule is written."""
    day_set = None if days is None else frozenset(days)
    return prepared.filter(
        lambda row: (
            row[REJECT_REASON_COLUMN] is None
            and row[LABEL_COLUMN] is not None
            and (day_set is None or row[DAY_COLUMN] in day_set)
        )
    )


def held_out_rows(prepared: ray.data.Dataset, split: TimeSplit) -> pd.DataFrame:
    """The test days' valid, labelled rows on the driver (small: a couple of days)."""
    return valid_labelled(prepared, split.test).to_pandas()


def labelled_rows(
    archive_uri: str,
    builder: TextBuilder,
    since: dt.date | None,
    until: dt.date | None,
    store: ObjectStore | None = None,
) -> pd.DataFrame:
    """Valid, labelled tickets of a window as model text, on the driver (keep windows small).
    ``builder`` must be the classifier's own, so the text matches what it was trained on."""
    with unreadable_files_named(archive_uri, since, until, store):
        return valid_labelled(read_window(archive_uri, builder, since, until, store)).to_pandas()
