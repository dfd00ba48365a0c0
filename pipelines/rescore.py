"""``rescore``: score a ticket archive in bulk with one registered version, and report misroutes.

One Ray Data pipeline streams every pending file of the window (``read_parquet``) through an
actor pool of :class:`ScoreTickets`, which wraps :class:`TicketClassifier`, the class the Serve
deployment wraps too, so a ticket scored online and in bulk by the same version gets the same
answer. The driver groups the scored blocks by day and commits each day on its own:

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
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data

from pipelines.archive import (
    PARTITION_KEY,
    Partition,
    check_archive,
    partition_dir,
    read_partition_file,
    resolve,
)
from pipelines.config import OncallConfig
from pipelines.data import PATH_COLUMN
from pipelines.errors import ArchiveError, ConfigError
from pipelines.predict import TicketClassifier
from pipelines.ray_runtime import ray_session
from pipelines.registry import CHAMPION, Registry, VersionRef
from pipelines.schema import (
    LABEL_COLUMN,
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_REASON_COLUMN,
    TICKET_READ_SCHEMA,
    TIMESTAMP_TYPE,
    split_valid_rows,
)
from pipelines.tracking import ensure_experiment, flatten_params, tracking_client

log = logging.getLogger(__name__)

RESCORE_EXPERIMENT = "rescore"
VERSION_KEY = "model_version"
MARKER = "_SUCCESS"
REJECTED_DIR = "_rejected"
TEMP_PREFIX = ".tmp-"
MISROUTED_ARTIFACT = "misrouted.csv"
# A day's scored rows are written in files of at most this many rows (bounds driver memory).
ROWS_PER_FILE = 250_000
TOP_REPORTED = 10

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
# What the actors return: the ticket (kept whole for rejected rows), its file, and the scores.
_PREDICTION_FIELDS = [f for f in SCORED_SCHEMA if f.name not in (*TICKET_READ_SCHEMA.names, "current_tenant")]
BATCH_SCHEMA = pa.schema([*REJECTED_SCHEMA, pa.field(PATH_COLUMN, pa.string()), *_PREDICTION_FIELDS])
MISROUTED_COLUMNS = [
    "ticket_id",
    "created_at",
    "service",
    "title",
    "current_tenant",
    "predicted_tenant",
    "confidence",
]


@dataclass(frozen=True)
class RescoreRequest:
    """What to rescore; ``None`` fields take the configured defaults (``data.archive``,
    ``rescore.out``, alias ``champion``, ``rescore.on_bad_file``)."""

    archive_uri: str | None = None
    out_uri: str | None = None
    alias: str | None = None
    version: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None
    on_bad_file: Literal["fail", "skip"] | None = None

    def __post_init__(self) -> None:
        if self.alias and self.version:
            raise ConfigError("rescore: give an alias or a version, not both")


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
    output: str  # <out>/model_version=<v>
    model_name: str
    model_version: str
    on_bad_file: str
    partitions: list[PartitionResult] = field(default_factory=list)  # committed by this run
    already_committed: list[dt.date] = field(default_factory=list)
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
        return sorted({p.previous_version for p in self.partitions if p.previous_version}, key=_version_key)

    def as_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {
            "rows_read": self.rows_read,
            "rows_scored": self.rows_scored,
            "rows_rejected": sum(self.rejected.values()),
            "rows_abstained": self.abstained,
            "rows_misrouted": self.misrouted,
            "partitions_scored": len(self.partitions),
            "partitions_already_committed": len(self.already_committed),
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
            "skipped_files": [asdict(s) for s in self.skipped_files],
            "top_misrouted_services": self.misrouted_services.most_common(TOP_REPORTED),
            "top_misroutes": self.misrouted_moves.most_common(TOP_REPORTED),
        }


class ScoreTickets:
    """Actor of the scoring pool: the row rules, then :meth:`TicketClassifier.predict`.

    The driver downloads the version once and ships its files (JSON, safetensors, tokenizer;
    a large base is referenced by path) so that no actor talks to the registry and actors on
    other nodes need no shared disk."""

    def __init__(
        self,
        model_files: dict[str, bytes],
        model_name: str,
        model_version: str,
        top_k: int,
        misroute_confidence: float,
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="oncall-rescore-")  # lives with the actor
        model_dir = Path(self._folder.name) / "classifier"
        for relative, content in model_files.items():
            target = model_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        self.classifier = TicketClassifier.from_dir(model_dir)
        self.classifier.version = model_version
        self.model_name = model_name
        self.top_k = top_k
        self.misroute_confidence = misroute_confidence

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        valid, rejected = split_valid_rows(batch)
        predictions = self.classifier.predict(valid.to_dict("records"), top_k=self.top_k)
        current = valid[LABEL_COLUMN].astype(object).tolist()
        confidence = np.array([p.confidence for p in predictions], dtype=np.float32)
        misrouted = [
            isinstance(tenant, str) and tenant != p.tenant and score > self.misroute_confidence
            for tenant, p, score in zip(current, predictions, confidence, strict=True)
        ]
        frame = pd.concat([valid.assign(**{REJECT_REASON_COLUMN: None}), rejected], ignore_index=True)
        padding = [None] * len(rejected)
        table = pa.Table.from_pandas(
            frame[[*REJECTED_SCHEMA.names, PATH_COLUMN]],
            schema=pa.schema([*REJECTED_SCHEMA, pa.field(PATH_COLUMN, pa.string())]),
            preserve_index=False,
        )
        scored_at = dt.datetime.now(dt.UTC)
        columns = {
            "predicted_tenant": pa.array([p.tenant for p in predictions] + padding, pa.string()),
            "confidence": pa.array([*confidence.tolist(), *padding], pa.float32()),
            "top_k": pa.array(
                [[{"tenant": t, "score": s} for t, s in p.top_k] for p in predictions] + padding, TOP_K_TYPE
            ),
            "abstain": pa.array([p.abstain for p in predictions] + padding, pa.bool_()),
            "misrouted": pa.array(misrouted + padding, pa.bool_()),
            "model_name": pa.array([self.model_name] * len(frame), pa.string()),
            "model_version": pa.array([self.classifier.version] * len(frame), pa.string()),
            "scored_at": pa.array([scored_at] * len(frame), TIMESTAMP_TYPE),
        }
        for name, values in columns.items():
            table = table.append_column(name, values)
        return table.cast(BATCH_SCHEMA)


def rescore(
    config: OncallConfig,
    request: RescoreRequest | None = None,
    *,
    on_commit: Callable[[PartitionResult], None] | None = None,
) -> RescoreSummary:
    """Score the window's uncommitted days with one version; log the summary to MLflow.

    ``on_commit`` is called after each day is committed (progress, and a hook for tests that
    interrupt a run)."""
    request = request or RescoreRequest()
    started = time.monotonic()
    archive = request.archive_uri or config.archive_uri
    out = request.out_uri or config.rescore_out
    policy = request.on_bad_file or config.rescore.on_bad_file
    registry = Registry(config)
    ref = (
        registry.get(version=request.version)
        if request.version
        else registry.get(alias=request.alias or CHAMPION)
    )
    out_fs, out_root = resolve(out)
    version_dir = f"{out_root.rstrip('/')}/{VERSION_KEY}={ref.version}"
    summary = RescoreSummary(
        archive=archive,
        output=f"{out.rstrip('/')}/{VERSION_KEY}={ref.version}",
        model_name=ref.name,
        model_version=ref.version,
        on_bad_file=policy,
    )

    pending = _plan(request, summary, _committed_days(out_fs, version_dir))
    log.info(
        "rescoring %s with %s version %s into %s: %d day(s) to score, %d already committed",
        archive,
        ref.name,
        ref.version,
        summary.output,
        len(pending),
        len(summary.already_committed),
    )

    client = tracking_client(config)
    experiment_id = ensure_experiment(client, config, RESCORE_EXPERIMENT)
    run_name = f"rescore-v{ref.version}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    summary.run_id = run_id
    try:
        _log_params(client, run_id, config, request, summary)
        with tempfile.TemporaryDirectory(prefix="oncall-rescore-") as folder:
            misrouted_csv = Path(folder) / MISROUTED_ARTIFACT
            if pending:
                writer = _PartitionWriter(
                    out_fs, out_root, version_dir, ref, summary, misrouted_csv, on_commit
                )
                with ray_session():
                    _score_pending(config, registry, ref, pending, policy, writer, Path(folder))
            summary.seconds = time.monotonic() - started
            _log_results(client, run_id, summary, misrouted_csv)
        client.set_terminated(run_id, status="FINISHED")
    except BaseException:
        summary.seconds = time.monotonic() - started
        _log_metrics(client, run_id, summary)
        client.set_terminated(run_id, status="FAILED")
        raise
    log.info(
        "rescored %d row(s) in %.1f s: %d scored, %d rejected, %d misrouted",
        summary.rows_read,
        summary.seconds,
        summary.rows_scored,
        sum(summary.rejected.values()),
        summary.misrouted,
    )
    return summary


def _plan(request: RescoreRequest, summary: RescoreSummary, committed: set[dt.date]) -> list[Partition]:
    """The window's days not committed yet; their files' footer problems fail the run or are
    recorded as skipped files. Committed days are not checked again."""
    partitions, problems = check_archive(summary.archive, request.since, request.until)
    if not partitions:
        window = f"between {request.since or 'the start'} and {request.until or 'the end'}"
        raise ArchiveError(f"archive {summary.archive} has no partitions {window}")
    pending = [p for p in partitions if p.day not in committed]
    summary.already_committed = sorted(p.day for p in partitions if p.day in committed)
    pending_files = {path for p in pending for path in p.files}
    problems = [p for p in problems if p.source in pending_files]
    if problems and summary.on_bad_file == "fail":
        raise ArchiveError(
            "the archive breaks the ticket contract (--on-bad-file skip scores the rest):\n  "
            + "\n  ".join(map(str, problems))
        )
    by_file: dict[str, list[str]] = {}
    for problem in problems:
        by_file.setdefault(problem.source, []).append(str(problem).removeprefix(f"{problem.source}: "))
    summary.skipped_files = [SkippedFile(path, "; ".join(reasons)) for path, reasons in by_file.items()]
    for skipped in summary.skipped_files:
        log.warning("skipping %s: %s", skipped.path, skipped.reason)
    return pending


def _score_pending(
    config: OncallConfig,
    registry: Registry,
    ref: VersionRef,
    pending: list[Partition],
    policy: str,
    writer: _PartitionWriter,
    scratch: Path,
) -> None:
    """Run the pipeline over the pending days; a file that cannot be read is named (``fail``)
    or skipped and the pipeline restarted on the days not committed yet (``skip``)."""
    filesystem, _ = resolve(writer.summary.archive)
    model_files = _read_dir(registry.download(ref, scratch / "model"))
    while True:
        skipped = {s.path for s in writer.summary.skipped_files}
        todo = [p for p in pending if p.day not in writer.done]
        files = [path for p in todo for path in p.files if path not in skipped]
        expected = {p.day: 0 for p in todo if any(path not in skipped for path in p.files)}
        day_of = {path: p.day for p in todo for path in p.files}
        for path in files:
            expected[day_of[path]] += pq.read_metadata(path, filesystem=filesystem).num_rows
        skipped_of = {
            p.day: tuple(path for path in p.files if path in skipped) for p in todo if p.day in expected
        }
        writer.open(expected, day_of, skipped_of)
        if not files:
            writer.finish()
            return
        blocks = _scored_blocks(config, filesystem, files, ref, model_files)
        try:
            for block in blocks:
                writer.add(block)
            writer.finish()
            return
        except _ReadError as failure:
            unreadable = _unreadable_files(failure.error, files, filesystem)
            if not unreadable:
                raise failure.error from None
            if policy == "fail":
                raise ArchiveError(
                    "; ".join(f"{s.path}: {s.reason}" for s in unreadable)
                    + " (--on-bad-file skip scores the rest)"
                ) from None
            for item in unreadable:
                log.warning(
                    "skipping %s: %s; restarting on the days not committed yet", item.path, item.reason
                )
            writer.summary.skipped_files.extend(unreadable)
        finally:
            blocks.close()  # stops the pipeline (and its actors) when a commit hook or error ends it


class _ReadError(Exception):
    """The pipeline failed reading a file (Ray wraps the pyarrow error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _scored_blocks(
    config: OncallConfig,
    filesystem: pafs.FileSystem,
    files: list[str],
    ref: VersionRef,
    model_files: dict[str, bytes],
) -> Iterator[pa.Table]:
    settings = config.rescore
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = min(settings.actors, gpus) if gpus else settings.actors
    log.info(
        "scoring %d file(s) with %d actor(s) (%s CPU%s each), batches of %d",
        len(files),
        actors,
        settings.cpus_per_actor,
        " + 1 GPU" if gpus else "",
        settings.batch_size,
    )
    dataset = (
        ray.data.read_parquet(
            files, filesystem=filesystem, partitioning=None, include_paths=True, schema=TICKET_READ_SCHEMA
        )
        # The reader merges small files into one block, which one actor would score alone:
        # streaming repartition (no barrier) into batch-sized blocks spreads them over the pool.
        .repartition(target_num_rows_per_block=settings.batch_size)
    ).map_batches(
        ScoreTickets,
        fn_constructor_kwargs={
            "model_files": model_files,
            "model_name": ref.name,
            "model_version": ref.version,
            "top_k": config.evaluate.top_k,
            "misroute_confidence": settings.misroute_confidence,
        },
        batch_size=settings.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=1 if gpus else None,
    )
    blocks = iter(dataset.iter_batches(batch_format="pyarrow", batch_size=None))
    try:
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                return
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc, OSError | pa.ArrowException):  # Ray keeps the cause's type
                    raise _ReadError(exc) from exc
                raise
            yield block
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def _unreadable_files(
    error: BaseException, files: list[str], filesystem: pafs.FileSystem
) -> list[SkippedFile]:
    """The files behind a read error: the ones Ray's message names, else every file, each
    confirmed by reading it on the driver."""
    named = [path for path in files if path in str(error)]
    unreadable = []
    for path in named or files:
        try:
            read_partition_file(path, filesystem)
        except ArchiveError as exc:
            unreadable.append(SkippedFile(path, str(exc).removeprefix(f"{path}: ")))
    return unreadable


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


class _PartitionWriter:
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


def _committed_days(filesystem: pafs.FileSystem, version_dir: str) -> set[dt.date]:
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
        if is_version_dir and name != version and _version_key(name) < _version_key(version):
            found.append((name, entry.path))
    return sorted(found, key=lambda item: _version_key(item[0]), reverse=True)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


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


def _read_dir(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def _log_params(
    client: Any, run_id: str, config: OncallConfig, request: RescoreRequest, summary: RescoreSummary
) -> None:
    params = flatten_params("rescore", config.rescore.model_dump())
    params.update(
        {
            "archive": summary.archive,
            "output": summary.output,
            "model_name": summary.model_name,
            "model_version": summary.model_version,
            "alias": request.alias or ("" if request.version else CHAMPION),
            "since": str(request.since or ""),
            "until": str(request.until or ""),
            "on_bad_file": summary.on_bad_file,
        }
    )
    for name, value in params.items():
        client.log_param(run_id, name, value)
    client.set_tag(run_id, "model_version", summary.model_version)


def _log_metrics(client: Any, run_id: str, summary: RescoreSummary) -> None:
    for name, value in summary.as_metrics().items():
        client.log_metric(run_id, name, float(value))


def _log_results(client: Any, run_id: str, summary: RescoreSummary, misrouted_csv: Path) -> None:
    """Metrics, the summary, per-day counts and the misrouted tickets (CSV) of the run."""
    _log_metrics(client, run_id, summary)
    folder = misrouted_csv.parent
    if not misrouted_csv.exists():
        pd.DataFrame(columns=["date", *MISROUTED_COLUMNS]).to_csv(misrouted_csv, index=False)
    (folder / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
    summary.by_date().to_csv(folder / "by_date.csv", index=False)
    for name in (MISROUTED_ARTIFACT, "summary.json", "by_date.csv"):
        client.log_artifact(run_id, str(folder / name))
