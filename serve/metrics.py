"""Prometheus metrics of the endpoint, exported by Ray's metrics agent (``ray.serve.metrics``).

Created lazily inside each replica: a metric object belongs to the process that reports it.
Scraped from each node's metrics port with a ``ray_`` prefix (``_total`` on counters); Serve
adds ``deployment``, ``replica`` and ``application`` labels. ``platform/observability/`` holds
the dashboard and alert rules over them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
NO_VERSION = 0.0  # registry versions start at 1
NEVER = 0.0  # the nightly has not succeeded yet: the staleness alert fires
# Ray's metrics agent drops a gauge series that was not set again within two report intervals
# (measured on Ray 2.60: a gauge set once left the scrape 20-30 s later; the default report
# interval is 10 s), so the last values are set again this often.
GAUGE_KEEPALIVE_S = 5.0
CANCELLED = "499"

CallNext = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, CallNext], Awaitable[Response]]


@dataclass(frozen=True)
class IngressMetrics:
    requests: metrics.Counter
    latency_ms: metrics.Histogram


class GaugeKeeper:
    """Sets gauges and keeps setting them to their last value every ``interval_s`` (a daemon
    thread, started with the first replica's metrics), so that a value that does not change stays
    in the scrape."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last: dict[metrics.Gauge, float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._keep, name="gauge-keepalive", daemon=True).start()

    def set(self, gauge: metrics.Gauge, value: float) -> None:
        with self._lock:
            self._last[gauge] = value
            gauge.set(value)

    def _keep(self) -> None:
        while True:
            time.sleep(self._interval_s)
            with self._lock:
                for gauge, value in self._last.items():
                    gauge.set(value)


@dataclass(frozen=True)
class ModelMetrics:
    batch_size: metrics.Histogram
    tickets: metrics.Counter
    abstentions: metrics.Counter
    unscorable: metrics.Counter
    load_failures: metrics.Counter
    version: metrics.Gauge
    nightly_success: metrics.Gauge
    gauges: GaugeKeeper

    def record_version(self, version: str | None) -> None:
        self.gauges.set(self.version, float(version) if version else NO_VERSION)

    def record_nightly_success(self, at: dt.datetime | None) -> None:
        """The registry's record of the last successful nightly, re-exported by every replica:
        the nightly's own Ray cluster (and its metrics) is gone when a rule needs the value."""
        self.gauges.set(self.nightly_success, at.timestamp() if at else NEVER)


@functools.cache
def ingress_metrics() -> IngressMetrics:
    return IngressMetrics(
        requests=metrics.Counter(
            "oncall_router_requests",
            description="HTTP requests by route and status.",
            tag_keys=("route", "status"),
        ),
        latency_ms=metrics.Histogram(
            "oncall_router_request_latency_ms",
            description="HTTP request latency (ms) by route.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route",),
        ),
    )


@functools.cache
def model_metrics() -> ModelMetrics:
    created = ModelMetrics(
        batch_size=metrics.Histogram(
            "oncall_router_batch_size",
            description="Tickets scored per model call.",
            boundaries=BATCH_SIZE_BOUNDARIES,
        ),
        tickets=metrics.Counter(
            "oncall_router_tickets_scored",
            description="Tickets scored, by model version.",
            tag_keys=("version",),
        ),
        abstentions=metrics.Counter(
            "oncall_router_abstentions",
            description="Tickets below the abstain threshold, by version.",
            tag_keys=("version",),
        ),
        unscorable=metrics.Counter(
            "oncall_router_unscorable_tickets",
            description="Tickets the model failed on (answered alone with an error; neighbours unharmed).",
        ),
        load_failures=metrics.Counter(
            "oncall_router_model_load_failures",
            description="Failed checks of the alias or loads of its version (the replica keeps what it has).",
        ),
        version=metrics.Gauge(
            "oncall_router_model_version",
            description="Registry version this replica serves (0: none loaded yet).",
        ),
        nightly_success=metrics.Gauge(
            "oncall_router_nightly_last_success_timestamp_seconds",
            description="When the last nightly run succeeded (Unix time, from the registry; 0: never).",
        ),
        gauges=GaugeKeeper(GAUGE_KEEPALIVE_S),
    )
    created.record_version(None)  # a replica that never loads a version shows up as 0
    return created


def count_requests(routes: tuple[str, ...]) -> Middleware:
    """An HTTP middleware counting every request by route (``other`` outside ``routes``, which
    bounds the label's values) and status, and timing it. An unhandled exception escapes
    ``call_next`` (Starlette answers 500 outside the middleware): it is counted as a 500 here; a
    cancelled request as 499, nginx's "client closed request"."""

    async def middleware(request: Request, call_next: CallNext) -> Response:
        started = time.perf_counter()
        route = request.url.path if request.url.path in routes else "other"
        try:
            response = await call_next(request)
        except asyncio.CancelledError:  # the client (or the proxy's request timeout) gave up
            _observe_request(route, CANCELLED, started)
            raise
        except BaseException:
            _observe_request(route, "500", started)
            raise
        _observe_request(route, str(response.status_code), started)
        return response

    return middleware


def _observe_request(route: str, status: str, started: float) -> None:
    recorded = ingress_metrics()
    recorded.requests.inc(tags={"route": route, "status": status})
    recorded.latency_ms.observe((time.perf_counter() - started) * 1000, tags={"route": route})
