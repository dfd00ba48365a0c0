"""``rescore``: score a ticket archive in bulk with one registered version, and report misroutes.

One Ray Data pipeline streams every pending file of the window (``read_parquet``) through an
actor pool of :class:`ScoreTickets`, which wraps :class:`TicketClassifier`, the class the Serve
deployment wraps too, so a ticket scored online and in bulk by the same version gets the same
answer. The driver groups the scored blocks by day and commits each day on its own to the scored
table (:mod:`pipelines.inference.output`, :mod:`pipelines.inference.table`); the misroute report
is read back from the table.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import ray
import ray.data

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive, Partition, partition_dir
from pipelines.contract.rows import TICKET_READ_SCHEMA
from pipelines.errors import ArchiveError, ConfigError
from pipelines.inference.actor import ScoreTickets
from pipelines.inference.output import PartitionWriter, file_name
from pipelines.inference.summary import (
    MISROUTED_ARTIFACT,
    PartitionResult,
    RescoreSummary,
    SkippedFile,
    log_metrics,
    log_params,
    log_reports,
    report_misroutes,
)
from pipelines.inference.table import ScoredTable
from pipelines.ray_runtime import ray_session
from pipelines.registry.tracking import Tracker
from pipelines.registry.versions import CHAMPION, Registry, VersionRef

log = logging.getLogger(__name__)

RESCORE_EXPERIMENT = "rescore"


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
    # Plan: the version, the scored table, the archive's days the table does not hold yet.
    registry = Registry(config)
    ref = _version_of(registry, request)
    archive = Archive(request.archive_uri or config.archive_uri, config.object_store)
    table = ScoredTable.open(config, request.out_uri)
    summary = RescoreSummary(
        archive=archive.uri,
        output=str(table),
        model_name=ref.name,
        model_version=ref.version,
        on_bad_file=request.on_bad_file or config.rescore.on_bad_file,
    )
    pending = _plan(archive, request, summary, _complete_days(archive, request, table, ref, summary))

    # Score and commit each day, in one MLflow run whose metrics are logged even when it fails.
    run_name = f"rescore-v{ref.version}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    with Tracker(config).run(
        RESCORE_EXPERIMENT, run_name=run_name, tags={"model_version": ref.version}
    ) as run:
        summary.run_id = run.run_id
        log_params(run, config, summary, alias=_alias_of(request), since=request.since, until=request.until)
        with tempfile.TemporaryDirectory(prefix="oncall-rescore-") as folder:
            misrouted_csv = Path(folder) / MISROUTED_ARTIFACT
            try:
                if pending:
                    writer = PartitionWriter(table, ref, summary, on_commit)
                    model = _ScoringModel.of(registry, ref, Path(folder))
                    _score_pending(config, archive, model, pending, writer)
            finally:
                summary.seconds = time.monotonic() - started
                log_metrics(run, summary)

            # Summary: the run's reports, misroutes read back from the table.
            report_misroutes(table, summary, misrouted_csv)
            log_reports(run, summary, misrouted_csv)
    log.info(
        "rescored %d row(s) in %.1f s: %d scored, %d rejected, %d misrouted",
        summary.rows_read,
        summary.seconds,
        summary.rows_scored,
        sum(summary.rejected.values()),
        summary.misrouted,
    )
    return summary


def _version_of(registry: Registry, request: RescoreRequest) -> VersionRef:
    if request.version:
        return registry.get(version=request.version)
    return registry.get(alias=request.alias or CHAMPION)


def _alias_of(request: RescoreRequest) -> str:
    """The alias the run followed, as logged ('' when a version number was given)."""
    return request.alias or ("" if request.version else CHAMPION)


@dataclass(frozen=True)
class _ScoringModel:
    """The version the actors load: its files, downloaded once by the driver."""

    ref: VersionRef
    files: dict[str, bytes]

    @classmethod
    def of(cls, registry: Registry, ref: VersionRef, scratch: Path) -> _ScoringModel:
        root = registry.download(ref, scratch / "model")
        return cls(ref, {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})


def _complete_days(
    archive: Archive, request: RescoreRequest, table: ScoredTable, ref: VersionRef, summary: RescoreSummary
) -> set[dt.date]:
    """Days the table holds for the version whose partition has no file its commit did not
    score; a day with a file that arrived later is scored again, whole (one overwrite)."""
    committed = table.committed_days(ref.version)
    recorded = table.scored_files(ref.version)
    complete = set()
    for partition in archive.partitions(request.since, request.until, misnamed="skip"):
        if partition.day not in committed:
            continue
        scored = recorded.get(partition.day)
        late = sorted(
            file_name(path)
            for path in partition.files
            if scored is not None and file_name(path) not in scored
        )
        if late:
            summary.late_files[partition.day] = late
            log.warning(
                "%s: %d file(s) arrived after version %s scored the day (%s): scoring the day again",
                partition_dir(archive.uri, partition.day),
                len(late),
                ref.version,
                ", ".join(late),
            )
        else:
            complete.add(partition.day)
    return complete


def _plan(
    archive: Archive, request: RescoreRequest, summary: RescoreSummary, committed: set[dt.date]
) -> list[Partition]:
    """The window's days not committed yet; their files' footer problems fail the run or are
    recorded as skipped files. Committed days are not checked again."""
    partitions, problems = archive.check(request.since, request.until)
    if not partitions:
        window = f"between {request.since or 'the start'} and {request.until or 'the end'}"
        raise ArchiveError(f"archive {summary.archive} has no partitions {window}")
    pending = [p for p in partitions if p.day not in committed]
    summary.already_committed = sorted(p.day for p in partitions if p.day in committed)
    # A misnamed partition directory belongs to no day: it is always a problem of the run.
    committed_files = {path for p in partitions if p.day in committed for path in p.files}
    problems = [p for p in problems if p.source not in committed_files]
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
    log.info(
        "rescoring %s with %s version %s into %s: %d day(s) to score, %d already committed",
        summary.archive,
        summary.model_name,
        summary.model_version,
        summary.output,
        len(pending),
        len(summary.already_committed),
    )
    return pending


def _score_pending(
    config: OncallConfig,
    archive: Archive,
    model: _ScoringModel,
    pending: list[Partition],
    writer: PartitionWriter,
) -> None:
    """Run the pipeline over the pending days; a file that cannot be read is named (``fail``)
    or skipped and the pipeline restarted on the days not committed yet (``skip``)."""
    with ray_session(config):
        while True:
            files = _open_pass(archive, pending, writer)
            if not files:
                writer.finish()
                return
            blocks = _scored_blocks(config, archive, files, model)
            try:
                for block in blocks:
                    writer.add(block)
                writer.finish()
                return
            except _ReadError as failure:
                _skip_unreadable(failure, archive, files, writer.summary)
            finally:
                blocks.close()  # stops the pipeline (and its actors) when a commit hook or error ends it


def _open_pass(archive: Archive, pending: list[Partition], writer: PartitionWriter) -> list[str]:
    """Open the writer on the days not committed yet, their rows counted from the footers of
    the files not skipped; returns those files."""
    skipped = {s.path for s in writer.summary.skipped_files}
    todo = [p for p in pending if p.day not in writer.done]
    files = [path for p in todo for path in p.files if path not in skipped]
    expected = {p.day: 0 for p in todo if any(path not in skipped for path in p.files)}
    day_of = {path: p.day for p in todo for path in p.files}
    for path in files:
        expected[day_of[path]] += archive.num_rows(path)
    skipped_of = {
        p.day: tuple(path for path in p.files if path in skipped) for p in todo if p.day in expected
    }
    writer.open(expected, day_of, skipped_of)
    return files


def _skip_unreadable(
    failure: _ReadError, archive: Archive, files: list[str], summary: RescoreSummary
) -> None:
    """Record the files a read error came from as skipped (``skip``), or fail naming them."""
    unreadable = _unreadable_files(failure.error, files, archive)
    if not unreadable:
        raise failure.error from None
    if summary.on_bad_file == "fail":
        raise ArchiveError(
            "; ".join(f"{s.path}: {s.reason}" for s in unreadable) + " (--on-bad-file skip scores the rest)"
        ) from None
    for item in unreadable:
        log.warning("skipping %s: %s; restarting on the days not committed yet", item.path, item.reason)
    summary.skipped_files.extend(unreadable)


class _ReadError(Exception):
    """The pipeline failed reading a file (Ray wraps the pyarrow error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _scored_blocks(
    config: OncallConfig, archive: Archive, files: list[str], model: _ScoringModel
) -> Iterator[pa.Table]:
    """The scored blocks of ``files``, in the order the pool finishes them; a file that cannot
    be read surfaces as :class:`_ReadError`."""
    blocks = iter(
        _scoring_dataset(config, archive, files, model).iter_batches(batch_format="pyarrow", batch_size=None)
    )
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


def _scoring_dataset(
    config: OncallConfig, archive: Archive, files: list[str], model: _ScoringModel
) -> ray.data.Dataset:
    """``read_parquet`` → batch-sized blocks → the :class:`ScoreTickets` pool (one GPU per
    actor when the cluster has GPUs, at most one actor per GPU)."""
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
    dataset = ray.data.read_parquet(
        files, filesystem=archive.filesystem, partitioning=None, include_paths=True, schema=TICKET_READ_SCHEMA
    )
    # The reader merges small files into one block, which one actor would score alone:
    # streaming repartition (no barrier) into batch-sized blocks spreads them over the pool.
    return dataset.repartition(target_num_rows_per_block=settings.batch_size).map_batches(
        ScoreTickets,
        fn_constructor_kwargs={
            "model_files": model.files,
            "model_name": model.ref.name,
            "model_version": model.ref.version,
            "top_k": config.evaluate.top_k,
            "misroute_confidence": settings.misroute_confidence,
            "cpu_runtime": config.inference.cpu_runtime,
        },
        batch_size=settings.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=1 if gpus else None,
    )


def _unreadable_files(error: BaseException, files: list[str], archive: Archive) -> list[SkippedFile]:
    """The files behind a read error: the ones Ray's message names, else every file, each
    confirmed by reading it on the driver."""
    return [SkippedFile(problem.source, problem.problem) for problem in archive.unreadable(error, files)]
