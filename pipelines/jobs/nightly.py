"""``nightly``: the online-learning loop for one date.

new archive days + feedback → incremental training (warm start from the champion, replay of
older tickets, the head grows for new tenants) → register → gate → promote → rescore →
retention (:mod:`pipelines.jobs.retention`, when ``retention.after_nightly``; its failure is
reported in the summary and never fails the nightly).

Every step leaves a trace in MLflow (the training run and the registered version are tagged
with the date, the gate's decision is tagged on the version, the nightly run records the rest),
so a re-run of the same date reuses what is done: a finished date is a no-op, a crashed one
resumes where it stopped, and nothing is trained or registered twice. The jobs' lock
(:mod:`pipelines.registry.lock`) keeps it from overlapping another nightly, a promote, a rollback
or a rescore.

A successful run is also recorded on the registered model (``Registry.record_nightly_success``):
the serving replicas export it as ``oncall_router_nightly_last_success_timestamp_seconds``, which
the stale-nightly alert of ``platform/observability`` reads (this job's Ray cluster, and any
metric it could export, is gone by then).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive
from pipelines.contract.days import DayWindow
from pipelines.data.feedback import FeedbackStore, accepted_labels, changed_labels
from pipelines.errors import OncallError
from pipelines.faults import Faults
from pipelines.inference.quality import quality_drops, version_quality
from pipelines.inference.rescore import RescoreRequest, rescore
from pipelines.inference.table import ScoredTable
from pipelines.jobs.retention import run_retention, size_text
from pipelines.ray_runtime import TerminatedError, ray_session
from pipelines.registry.lock import jobs_lock
from pipelines.registry.promotion import promote
from pipelines.registry.tracking import RunLog, RunRecord, Tracker
from pipelines.registry.versions import CHAMPION, Registry, VersionRef
from pipelines.training.job import TrainRequest, resolve_base, train

log = logging.getLogger(__name__)

NIGHTLY_EXPERIMENT = "nightly"
DATE_TAG = "nightly.date"
INGESTED_TAG = "nightly.ingested_until"
STEPS = ("ingest", "train", "register", "gate", "rescore", "retention")
T = TypeVar("T")


@dataclass(frozen=True)
class NightlyRequest:
    date: dt.date
    archive_uri: str | None = None
    faults: Faults = field(default_factory=Faults)  # tests only: points nightly.after.<step>


@dataclass
class NightlySummary:
    date: dt.date
    run_id: str = ""
    status: str = "completed"  # completed | already done | nothing new
    new_days: list[dt.date] = field(default_factory=list)
    window: str = ""
    feedback_labels: int = 0  # tickets answered since the last successful run
    feedback_changed: int = 0  # accepted feedback labels that differ from the archive's
    feedback_held: int = 0  # tickets whose label names a new tenant not yet confirmed
    feedback_rejected: int = 0  # tickets whose label names a new tenant, refused by the policy
    champion_before: str | None = None
    version: str | None = None
    decision: str = ""  # promoted | rejected | (empty: nothing trained)
    reasons: list[str] = field(default_factory=list)
    champion_after: str | None = None
    train_run_id: str = ""
    rescored_rows: int = 0
    rescored_misrouted: int = 0
    quality: dict[str, float] = field(default_factory=dict)  # the champion on the rescored days
    quality_alerts: list[str] = field(default_factory=list)  # drops beyond nightly.quality_drop_margin
    retention_removed: int = 0  # directories the retention step removed
    retention_freed_bytes: int = 0
    retention_error: str = ""  # why the retention step failed (the nightly still succeeded)
    step_seconds: dict[str, float] = field(default_factory=dict)
    reused_steps: list[str] = field(default_factory=list)


def default_date() -> dt.date:
    """Yesterday (UTC): the newest day whose partition is complete."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def last_successful_date(config: OncallConfig) -> dt.date | None:
    runs = _finished_runs(Tracker(config))
    return max((dt.date.fromisoformat(r.tags[DATE_TAG]) for r in runs), default=None)


def run_nightly(config: OncallConfig, request: NightlyRequest) -> NightlySummary:
    with jobs_lock(config, "nightly"):
        Registry(config).finish_interrupted_promotion()
        done = [r for r in _finished_runs(Tracker(config)) if r.tags[DATE_TAG] == request.date.isoformat()]
        if done:
            log.info("nightly %s already completed (run %s): nothing to do", request.date, done[0].run_id)
            return _summary_of(done[0], request.date)
        archive = Archive(request.archive_uri or config.archive_uri, config.object_store)
        days = [p.day for p in archive.partitions(until=request.date)]  # before Ray: fail fast
        with ray_session(config):
            return _NightlyRun(config, request, archive, days).run()


class _NightlyRun:
    def __init__(
        self, config: OncallConfig, request: NightlyRequest, archive: Archive, days: list[dt.date]
    ) -> None:
        self.config = config
        self.request = request
        self.date = request.date
        self.archive = archive.uri
        self.archive_days = days
        self._archive = archive
        self.tracker = Tracker(config)
        self.registry = Registry(config, self.tracker.client)
        self.summary = NightlySummary(date=self.date)
        self.overrides: dict[str, str] = {}  # feedback labels trained on: ticket → tenant (set by ingest)
        self.latest_feedback: dict[str, str] = {}  # every ticket's latest answer (set by ingest)
        self.window: tuple[dt.date | None, dt.date] = (None, self.date)  # set by the ingest step
        self.run_log: RunLog  # set by run()

    def run(self) -> NightlySummary:
        """The steps in one MLflow run: the date's unfinished run is resumed, else a new one."""
        unfinished = self.tracker.find(NIGHTLY_EXPERIMENT, tags={DATE_TAG: self.date.isoformat()})
        if unfinished:
            log.info("resuming nightly %s (run %s)", self.date, unfinished[0].run_id)
        with self.tracker.run(
            NIGHTLY_EXPERIMENT,
            run_name=f"nightly-{self.date.isoformat()}",
            tags={DATE_TAG: self.date.isoformat()},
            resume_run_id=unfinished[0].run_id if unfinished else None,
        ) as run:
            self.run_log = run
            self.summary.run_id = run.run_id
            self.summary.champion_before = _version_of(self.registry.alias_or_none(CHAMPION))
            ingested_until = self._step("ingest", self._ingest)
            if self.summary.new_days or self.summary.feedback_labels:
                train_run_id = self._step("train", self._train)
                version = self._step("register", lambda: self._register(train_run_id))
                self._step("gate", lambda: self._gate(version))
            else:
                self.summary.status = "nothing new"
                log.info("nightly %s: no new archive day and no new feedback: nothing to train", self.date)
            self._step("rescore", self._rescore)
            if self.config.retention.after_nightly:
                self._step("retention", self._retention)
            self.summary.champion_after = _version_of(self.registry.alias_or_none(CHAMPION))
            _record(run, self.summary, ingested_until)
            self.registry.record_nightly_success(dt.datetime.now(dt.UTC))
        return self.summary

    # -- steps ---------------------------------------------------------------------------------

    def _ingest(self) -> str:
        """New days: partitions after what the last successful run (or the champion) covered."""
        finished = _finished_runs(self.tracker)
        covered = _ingested_until(finished, self.registry)
        days = self.archive_days
        self.summary.new_days = [day for day in days if covered is None or day > covered]
        self._ingest_feedback(max((r.ended_at for r in finished if r.ended_at), default=None))
        needed = self.config.data.validation_days + self.config.data.test_days + 1
        window = days[-max(len(self.summary.new_days), needed) :] if covered is not None else days
        if not window:
            raise OncallError(f"archive {self.archive} has no partition on or before {self.date}")
        self.window = (window[0] if covered is not None else None, window[-1])
        self.summary.window = str(DayWindow.of(window))
        log.info(
            "nightly %s: %d new day(s) after %s, %d new feedback label(s); training window %s",
            self.date,
            len(self.summary.new_days),
            covered or "nothing",
            self.summary.feedback_labels,
            self.summary.window,
        )
        return (self.summary.new_days or [covered or self.date])[-1].isoformat()

    def _ingest_feedback(self, since_last: dt.datetime | None) -> None:
        """Feedback labels the policy lets into training (``feedback.*``), and what they change."""
        store = FeedbackStore(self.config.feedback_db_url)
        try:
            history = store.history()
        finally:
            store.close()
        champion = self.registry.alias_or_none(CHAMPION)
        labels = accepted_labels(
            history, self.registry.tenants(champion) if champion else (), self.config.feedback
        )
        self.overrides = labels.accepted
        self.latest_feedback = dict(zip(history.ticket_id, history.tenant, strict=True))  # oldest first
        recent = history if since_last is None else history[history.received_at > since_last]
        self.summary.feedback_labels = recent.ticket_id.nunique()
        self.summary.feedback_held = sum(labels.held.values())
        self.summary.feedback_rejected = sum(labels.rejected.values())
        self.summary.feedback_changed = changed_labels(self._archive, self.date, labels.accepted)
        if labels.held or labels.rejected:
            log.warning(
                "feedback naming tenants the champion does not know: held %s, rejected %s (feedback.new_tenants=%s)",
                labels.held,
                labels.rejected,
                self.config.feedback.new_tenants,
            )

    def _train(self) -> str:
        existing = self._tagged_training_run()
        if existing is not None:
            self.summary.reused_steps.append("train")
            log.info("reusing training run %s of %s", existing, self.date)
            self.summary.train_run_id = existing
            return existing
        champion = self.registry.alias_or_none(CHAMPION)
        with tempfile.TemporaryDirectory(prefix="oncall-nightly-") as folder:
            warm_start = self.registry.download(champion, Path(folder)) if champion else None
            result = train(
                self.config,
                TrainRequest(
                    archive_uri=self.archive,
                    base_dir=resolve_base(self.config),
                    since=self.window[0],
                    until=self.window[1],
                    register=False,
                    warm_start=warm_start,
                    replay_rows=self.config.nightly.replay_size if champion else 0,
                    label_overrides=self.overrides,
                    run_tags={DATE_TAG: self.date.isoformat()},
                ),
            )
        self.summary.train_run_id = result.run_id
        return result.run_id

    def _register(self, train_run_id: str) -> str:
        registered = self.registry.versions_of_run(train_run_id)
        if registered:
            self.summary.reused_steps.append("register")
            version = registered[-1].version
        else:
            version = self.registry.register_run(train_run_id).version
            self.registry.tag(version, {DATE_TAG: self.date.isoformat()})
        self.summary.version = version
        return version

    def _gate(self, version: str) -> None:
        gated = self.registry.get(version=version).gate
        if gated is not None:  # gated before a crash: finish what it decided, never gate twice
            self.summary.reused_steps.append("gate")
            self.summary.decision = gated.decision
            self.summary.reasons = list(gated.reasons)
            if gated.promoted and _version_of(self.registry.alias_or_none(CHAMPION)) != version:
                self.registry.crown(version, dethroned=gated.champion)
            return
        decision = promote(self.config, version, archive_uri=self.archive)
        self.summary.decision = "promoted" if decision.promoted else "rejected"
        self.summary.reasons = decision.reasons

    def _rescore(self) -> None:
        if self.registry.alias_or_none(CHAMPION) is None or self.config.nightly.rescore_days == 0:
            return
        since = self.date - dt.timedelta(days=self.config.nightly.rescore_days - 1)
        if not any(since <= day <= self.date for day in self.archive_days):
            log.warning(
                "rescore skipped: %s has no partition between %s and %s (nightly.rescore_days=%d)",
                self.archive,
                since,
                self.date,
                self.config.nightly.rescore_days,
            )
            return
        result = rescore(
            self.config,
            RescoreRequest(archive_uri=self.archive, alias=CHAMPION, since=since, until=self.date),
        )
        self.summary.rescored_rows = result.rows_read
        self.summary.rescored_misrouted = result.misrouted
        self._measure_quality(result.model_version, [d for d in self.archive_days if since <= d <= self.date])

    def _measure_quality(self, version: str, days: list[dt.date]) -> None:
        """The champion on the rescored days without labels (abstain rate, mean confidence) and
        with them (archive, feedback); a drop since the last nightly is flagged, never fatal."""
        quality = version_quality(ScoredTable.open(self.config), version, days, self.latest_feedback)
        self.summary.quality = quality.as_metrics()
        earlier = _finished_runs(self.tracker)
        if earlier:
            margin = self.config.nightly.quality_drop_margin
            self.summary.quality_alerts = quality_drops(quality, earlier[0].metrics, margin)
        if self.summary.quality_alerts:
            log.warning(
                "nightly %s: version %s's quality dropped since the last nightly by more than %.2f: %s",
                self.date,
                version,
                self.config.nightly.quality_drop_margin,
                "; ".join(self.summary.quality_alerts),
            )

    def _retention(self) -> None:
        """Last, after the promotion and under the nightly's lock: the new champion and the one
        it replaced are protected. A failure is reported, never undoes a nightly that promoted."""
        try:
            result = run_retention(self.config)
        except TerminatedError:
            raise
        except Exception as exc:  # any failure of a cleanup: reported, the nightly's work stands
            self.summary.retention_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "nightly %s: retention failed: %s", self.date, self.summary.retention_error, exc_info=True
            )
            return
        self.summary.retention_removed = len(result.removed)
        self.summary.retention_freed_bytes = result.bytes_freed
        if result.failed:
            self.summary.retention_error = (
                f"could not remove {len(result.failed)} directory(ies): "
                + "; ".join(f"{uri}: {error}" for uri, error in result.failed.items())[:300]
            )

    # -- bookkeeping ---------------------------------------------------------------------------

    def _step(self, name: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        log.info("nightly %s: step %s", self.date, name)
        value = action()
        seconds = time.monotonic() - started
        self.summary.step_seconds[name] = seconds
        self.run_log.metrics({f"seconds_{name}": seconds})
        self.request.faults.check(f"nightly.after.{name}")
        return value

    def _tagged_training_run(self) -> str | None:
        finished = self.tracker.find(
            self.config.registry.experiment, tags={DATE_TAG: self.date.isoformat()}, finished=True
        )
        return finished[0].run_id if finished else None


def _record(run: RunLog, summary: NightlySummary, ingested_until: str) -> None:
    """The summary on the nightly run: what a re-run of the date reads back (:func:`_summary_of`)."""
    run.tags(
        {
            INGESTED_TAG: ingested_until,
            "nightly.status": summary.status,
            "nightly.window": summary.window,
            "nightly.new_days": ",".join(day.isoformat() for day in summary.new_days),
            "nightly.champion_before": summary.champion_before or "",
            "nightly.version": summary.version or "",
            "nightly.decision": summary.decision,
            "nightly.reasons": "; ".join(summary.reasons),
            "nightly.champion_after": summary.champion_after or "",
            "nightly.train_run_id": summary.train_run_id,
            "nightly.reused_steps": ",".join(summary.reused_steps),
            "nightly.retention_error": summary.retention_error,
            "nightly.quality_alerts": "; ".join(summary.quality_alerts),
        }
    )
    run.metrics(
        {
            "new_days": len(summary.new_days),
            "feedback_labels": summary.feedback_labels,
            "feedback_changed": summary.feedback_changed,
            "feedback_held": summary.feedback_held,
            "feedback_rejected": summary.feedback_rejected,
            "rescored_rows": summary.rescored_rows,
            "rescored_misrouted": summary.rescored_misrouted,
            "retention_removed": summary.retention_removed,
            "retention_freed_bytes": summary.retention_freed_bytes,
            **summary.quality,
        }
    )


def _finished_runs(tracker: Tracker) -> list[RunRecord]:
    return tracker.find(NIGHTLY_EXPERIMENT, finished=True)


def _ingested_until(finished: list[RunRecord], registry: Registry) -> dt.date | None:
    """The last archive day already learned from: the last successful nightly run's, else the
    end of the champion's training data (its test days were seen in evaluation only, but they
    are the days before the first nightly)."""
    if finished:
        return max(dt.date.fromisoformat(r.tags[INGESTED_TAG]) for r in finished)
    champion = registry.alias_or_none(CHAMPION)
    window = champion.test_window if champion else None
    return window.last if window else None


def _version_of(ref: VersionRef | None) -> str | None:
    return ref.version if ref else None


def _summary_of(run: RunRecord, date: dt.date) -> NightlySummary:
    tags, metrics = run.tags, run.metrics
    return NightlySummary(
        date=date,
        run_id=run.run_id,
        status="already done",
        new_days=[dt.date.fromisoformat(d) for d in tags.get("nightly.new_days", "").split(",") if d],
        window=tags.get("nightly.window", ""),
        champion_before=tags.get("nightly.champion_before") or None,
        version=tags.get("nightly.version") or None,
        decision=tags.get("nightly.decision", ""),
        reasons=[r for r in tags.get("nightly.reasons", "").split("; ") if r],
        champion_after=tags.get("nightly.champion_after") or None,
        train_run_id=tags.get("nightly.train_run_id", ""),
        feedback_labels=int(metrics.get("feedback_labels", 0)),
        feedback_changed=int(metrics.get("feedback_changed", 0)),
        feedback_held=int(metrics.get("feedback_held", 0)),
        feedback_rejected=int(metrics.get("feedback_rejected", 0)),
        rescored_rows=int(metrics.get("rescored_rows", 0)),
        rescored_misrouted=int(metrics.get("rescored_misrouted", 0)),
        reused_steps=[s for s in tags.get("nightly.reused_steps", "").split(",") if s],
        retention_removed=int(metrics.get("retention_removed", 0)),
        retention_freed_bytes=int(metrics.get("retention_freed_bytes", 0)),
        retention_error=tags.get("nightly.retention_error", ""),
        quality={name: value for name, value in metrics.items() if name.startswith("quality_")},
        quality_alerts=[a for a in tags.get("nightly.quality_alerts", "").split("; ") if a],
    )


def describe(summary: NightlySummary) -> dict[str, Any]:
    """The summary as rows for a table (CLI, demo)."""
    return {
        "date": summary.date.isoformat(),
        "status": summary.status,
        "MLflow run (experiment nightly)": summary.run_id,
        "new days": (
            f"{summary.new_days[0]} … {summary.new_days[-1]} ({len(summary.new_days)})"
            if summary.new_days
            else "none"
        ),
        "training window": summary.window or "-",
        "new feedback labels": summary.feedback_labels,
        "labels changed by feedback": summary.feedback_changed,
        "feedback held / rejected (new tenants)": f"{summary.feedback_held} / {summary.feedback_rejected}",
        "champion before": summary.champion_before or "none",
        "trained version": summary.version or "-",
        "gate": summary.decision or "-",
        "champion after": summary.champion_after or "none",
        "rescored rows / misrouted": f"{summary.rescored_rows} / {summary.rescored_misrouted}",
        "champion quality (abstain / confidence / accuracy)": _quality_text(summary.quality),
        "quality alerts": "; ".join(summary.quality_alerts) or "none",
        "reused steps": ", ".join(summary.reused_steps) or "none",
        "retention": (
            f"failed: {summary.retention_error}"
            if summary.retention_error
            else f"removed {summary.retention_removed} ({size_text(summary.retention_freed_bytes)})"
        ),
        **{f"step {name} (s)": f"{seconds:.1f}" for name, seconds in summary.step_seconds.items()},
    }


def _quality_text(quality: dict[str, float]) -> str:
    if not quality:
        return "-"
    figures = [quality.get(f"quality_{name}", float("nan")) for name in ("abstain_rate", "mean_confidence")]
    accuracy = quality.get("quality_labelled_accuracy", float("nan"))
    return " / ".join(f"{value:.2f}" if value == value else "n/a" for value in (*figures, accuracy))
