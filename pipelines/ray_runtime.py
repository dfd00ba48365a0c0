"""Starting and stopping Ray for a job: connect to a cluster, or start a local one sized so
that Train workers and Ray Data actors never wait on each other for logical CPUs."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType

import ray

from pipelines.config import ServeConfig

log = logging.getLogger(__name__)

# Logical CPUs of a local cluster, at least this many: 2 Train workers plus a tokenizing
# actor on 2 physical cores otherwise wait forever (see NOTES). Threads stay bounded because
# Ray sets OMP_NUM_THREADS from each actor's own CPU request.
MIN_LOCAL_LOGICAL_CPUS = 4


class TerminatedError(Exception):
    """SIGTERM arrived: unwind so that Ray is shut down instead of leaking raylet/GCS."""


def serve_environment(settings: ServeConfig) -> dict[str, str]:
    """Variables a Ray cluster must start with to serve as configured (Serve reads them once,
    in each of its processes)."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if settings.throughput_optimized else {}


@contextmanager
def ray_session(environment: Mapping[str, str] | None = None) -> Iterator[None]:
    """Use the running Ray (tests, notebooks), the cluster in ``RAY_ADDRESS``, or a local one
    started here (with ``environment`` set first, so its processes inherit it) and shut down
    on exit, SIGTERM included."""
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            if environment:
                log.info(
                    "using the cluster in RAY_ADDRESS: its own environment decides %s", sorted(environment)
                )
            ray.init(log_to_driver=True)
        else:
            for name, value in (environment or {}).items():
                os.environ.setdefault(name, value)  # an explicit setting wins
            cpus = max(MIN_LOCAL_LOGICAL_CPUS, os.cpu_count() or 1)
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
        started = True
    previous = None
    if threading.current_thread() is threading.main_thread():

        def terminate(signum: int, frame: FrameType | None) -> None:
            raise TerminatedError(f"received signal {signum}")

        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if started:
            ray.shutdown()
