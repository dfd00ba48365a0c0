"""Prometheus metrics of the endpoint, exported by Ray's metrics agent (``ray.serve.metrics``).

Created lazily inside each replica: a metric object belongs to the process that reports it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass(frozen=True)
class IngressMetrics:
    requests: metrics.Counter
    latency_ms: metrics.Histogram


@dataclass(frozen=True)
class ModelMetrics:
    batch_size: metrics.Histogram
    tickets: metrics.Counter
    abstentions: metrics.Counter
    version: metrics.Gauge


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
    return ModelMetrics(
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
        version=metrics.Gauge(
            "oncall_router_model_version",
            description="Registry version this replica serves.",
        ),
    )
