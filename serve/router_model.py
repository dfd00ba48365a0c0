"""Model replicas: a registered ``TicketClassifier`` behind ``@serve.batch``, hot-swapped when
the alias it follows moves to another version.

A new version is downloaded and loaded off the request path (a watcher thread, or
``reconfigure``), then swapped in with one reference assignment: a batch that already started
finishes on the version it began with, and every answer names the version that scored it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from pipelines.config import OncallConfig, ServeConfig
from pipelines.faults import Faults
from pipelines.predict import Prediction, TicketClassifier
from pipelines.registry.versions import Registry, VersionRef
from serve.metrics import model_metrics

log = logging.getLogger(__name__)

UNSCORABLE = "the model could not score this ticket"
LOAD_BACKOFF_MAX_S = 300.0  # longest pause before trying a version that failed to load again
# Fault point (tests only, see pipelines/faults.py): every scoring call stalls past
# serve.request_timeout_s (by STALL_PAST_TIMEOUT_S) before it scores, as a wedged forward pass would.
STALL = "serve.model.stall"
STALL_PAST_TIMEOUT_S = 1.0


class ModelNotReadyError(Exception):
    """No version is loaded yet (the alias has no version, or loading it failed)."""


class ReplicaSettings(BaseModel):
    """What can change on running replicas (``user_config``), without restarting them."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    max_batch_size: int = Field(ge=1)
    batch_wait_timeout_s: float = Field(ge=0)
    alias_poll_interval_s: float = Field(gt=0)
    top_k: int = Field(ge=1)

    @classmethod
    def of(cls, settings: ServeConfig) -> ReplicaSettings:
        return cls(
            alias=settings.alias,
            max_batch_size=settings.max_batch_size,
            batch_wait_timeout_s=settings.batch_wait_timeout_s,
            alias_poll_interval_s=settings.alias_poll_interval_s,
            top_k=settings.top_k,
        )


@dataclass(frozen=True)
class LoadedVersion:
    classifier: TicketClassifier
    ref: VersionRef
    alias: str
    loaded_at: dt.datetime


class LoadBackoff:
    """The version that failed to load and when to try it again (doubling, capped): a broken
    version is not downloaded again on every alias poll."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s, self._max_s = first_s, max_s
        self.version: str | None = None
        self.error: str | None = None
        self._failures = 0
        self._retry_at = 0.0

    def waiting(self, version: str) -> bool:
        return version == self.version and time.monotonic() < self._retry_at

    def failed(self, version: str | None, exc: Exception) -> None:
        self._failures = self._failures + 1 if version == self.version else 1
        self.version = version
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        self.error = f"version {version or '?'}: {type(exc).__name__}: {first_line}"
        self._retry_at = time.monotonic() + min(self._max_s, self._first_s * 2 ** (self._failures - 1))

    def succeeded(self) -> None:
        self.version, self.error, self._failures = None, None, 0


class TicketRouterModel:
    def __init__(self, config: OncallConfig, faults: Faults | None = None) -> None:
        self._config = config
        self._stall_s = (
            config.serve.request_timeout_s + STALL_PAST_TIMEOUT_S
            if faults is not None and faults.planned_at(STALL) is not None
            else 0.0
        )
        self._registry = Registry(config)
        self._settings = ReplicaSettings.of(config.serve)
        self._loaded: LoadedVersion | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._metrics = model_metrics()
        self._backoff = LoadBackoff(self._settings.alias_poll_interval_s, LOAD_BACKOFF_MAX_S)
        self._watcher = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
        self._watcher.start()

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve calls this before the replica takes traffic and on every ``user_config`` change;
        the first call loads the alias's version, so a replica starts ready when there is one. A
        version that cannot load leaves the replica up (not ready, or on its previous version)."""
        settings = ReplicaSettings.model_validate(dict(user_config))
        self._settings = settings
        self.route.set_max_batch_size(settings.max_batch_size)
        self.route.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._refresh_or_keep()

    def refresh(self) -> None:
        """Load the version the alias points at, if it is not the one being served."""
        with self._load_lock:
            self._metrics.record_nightly_success(self._registry.last_nightly_success())
            alias = self._settings.alias
            ref = self._registry.alias_or_none(alias)
            current = self._loaded
            if ref is None:
                if current is None:
                    log.warning("no version of %s has alias '%s' yet", self._registry.name, alias)
                return
            if (current is not None and current.ref.version == ref.version) or self._backoff.waiting(
                ref.version
            ):
                return
            log.info("loading %s version %s (alias '%s')", ref.name, ref.version, alias)
            try:
                classifier = self._registry.load_classifier(
                    ref,
                    batch_size=self._settings.max_batch_size,
                    cpu_runtime=self._config.inference.cpu_runtime,
                )
            except Exception as exc:
                self._backoff.failed(ref.version, exc)
                raise
            self._loaded = LoadedVersion(classifier, ref, alias, dt.datetime.now(dt.UTC))
            self._backoff.succeeded()
            self._metrics.record_version(ref.version)
            log.info(
                "serving %s version %s (was %s)",
                ref.name,
                ref.version,
                current.ref.version if current else "none",
            )

    def _refresh_or_keep(self) -> None:
        """The registry may be briefly unreachable or the alias on a broken version: keep serving
        what is loaded, count the failure and retry later (backing off a broken version)."""
        try:
            self.refresh()
        except Exception:
            self._metrics.load_failures.inc()
            log.exception(
                "checking alias '%s' failed; still serving %s",
                self._settings.alias,
                self._loaded.ref.version if self._loaded else "nothing",
            )

    def _watch(self) -> None:
        while not self._stop.wait(self._settings.alias_poll_interval_s):
            self._refresh_or_keep()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def route(self, tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One ticket per call; Serve gathers concurrent calls into one forward pass."""
        return await self.route_many(tickets)

    async def route_many(self, tickets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many tickets in one call (the batch endpoint), answers in input order; a ticket the
        model cannot score gets ``{"error": …}`` and its neighbours their answers."""
        loaded = self._require()
        if self._stall_s:
            await asyncio.sleep(self._stall_s)
        # The forward pass runs in a thread so the event loop keeps gathering the next batch.
        predictions = await asyncio.to_thread(self._predict_isolated, loaded.classifier, tickets)
        self._record(loaded, [p for p in predictions if p is not None])
        model = {"name": loaded.ref.name, "version": loaded.ref.version}
        return [{**p.as_record(), "model": model} if p else {"error": UNSCORABLE} for p in predictions]

    def _predict_isolated(
        self, classifier: TicketClassifier, tickets: list[dict[str, Any]]
    ) -> list[Prediction | None]:
        """Score the batch; should it fail, score each ticket alone, so that one ticket the model
        cannot take never fails the others (concurrent callers share a batch)."""
        top_k = self._settings.top_k
        try:
            return list(classifier.predict(tickets, top_k))
        except Exception:
            log.exception("a batch of %d tickets failed; scoring them one by one", len(tickets))
        if len(tickets) == 1:
            self._metrics.unscorable.inc()
            return [None]
        answers: list[Prediction | None] = []
        for ticket in tickets:
            try:
                answers.append(classifier.predict([ticket], top_k)[0])
            except Exception:
                log.exception("ticket %r cannot be scored", str(ticket.get("ticket_id"))[:64])
                self._metrics.unscorable.inc()
                answers.append(None)
        return answers

    def info(self) -> dict[str, Any]:
        loaded = self._require()
        return {
            "name": loaded.ref.name,
            "version": loaded.ref.version,
            "alias": loaded.alias,
            "tenants": len(loaded.classifier.labels),
            "trained_window": str(loaded.ref.train_window or ""),
            "abstain_threshold": loaded.classifier.abstain_threshold,
            "loaded_at": loaded.loaded_at.isoformat(),
            "load_error": self._backoff.error,
        }

    def knows(self, tenant: str) -> bool:
        """Whether ``tenant`` is one of the loaded version's labels."""
        return tenant in self._require().classifier.labels.tenants

    def ready(self) -> bool:
        return self._loaded is not None

    def _require(self) -> LoadedVersion:
        loaded = self._loaded
        if loaded is None:
            failed = f" (last failure: {self._backoff.error})" if self._backoff.error else ""
            raise ModelNotReadyError(
                f"no version of {self._registry.name} with alias '{self._settings.alias}' is loaded yet"
                + failed
            )
        return loaded

    def _record(self, loaded: LoadedVersion, predictions: list[Prediction]) -> None:
        tags = {"version": loaded.ref.version}
        self._metrics.batch_size.observe(len(predictions))
        self._metrics.tickets.inc(len(predictions), tags=tags)
        abstained = sum(p.abstain for p in predictions)
        if abstained:
            self._metrics.abstentions.inc(abstained, tags=tags)

    def __del__(self) -> None:
        self._stop.set()
