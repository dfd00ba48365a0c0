"""Starting and stopping Ray for a job: connect to a cluster, or start a local one sized so
that Train workers and Ray Data actors never wait on each other for logical CPUs.

Quiet by default (``logging.ray_output: files``): the output of Ray's worker processes stays in
the session's ``logs/`` directory (for a local Ray under ``<data_dir>/ray/sessions``) instead of
being copied to the driver's console, and Ray's own console lines below WARNING are dropped (they
are in those files too). The directory is logged once. Measured on ``train --epochs 1`` over a
6-day sample archive, piped through ``cat``: 313 lines before (140 of them forwarded worker
lines), 41 after, 26 of them the result (README, *Commands*).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import ray

from pipelines.config import LoggingConfig, OncallConfig, ServeConfig
from pipelines.errors import OncallError

log = logging.getLogger(__name__)

# Logical CPUs of a local cluster, at least this many: 2 Train workers plus a tokenizing
# actor on 2 physical cores otherwise wait forever (see NOTES). Threads stay bounded because
# Ray sets OMP_NUM_THREADS from each actor's own CPU request.
MIN_LOCAL_LOGICAL_CPUS = 4
# Ray's sockets live in <temp dir>/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store.N, and a
# Unix socket path has at most 107 bytes: a temp dir longer than this leaves no room (then Ray's
# default temp dir is used, and named like any other).
MAX_TEMP_DIR_CHARS = 107 - len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.10")


class RayClusterError(OncallError):
    """The configured Ray cluster cannot be joined."""


class TerminatedError(Exception):
    """SIGTERM arrived: unwind so that Ray is shut down instead of leaking raylet/GCS."""


def serve_environment(settings: ServeConfig) -> dict[str, str]:
    """Variables a Ray cluster must start with to serve as configured (Serve reads them once,
    in each of its processes)."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if settings.throughput_optimized else {}


@contextmanager
def ray_session(
    config: OncallConfig | None = None, environment: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Use the running Ray (tests, notebooks), the cluster named by ``ray.address`` or
    ``RAY_ADDRESS`` (:func:`cluster_address`), or a local one started here (with ``environment`` set first, so its processes inherit it) and shut down
    on exit, SIGTERM included. ``config`` decides where Ray's output goes (without one: Ray's
    default temp dir, quiet)."""
    started = False
    if not ray.is_initialized():
        _start_ray(config, environment or {})
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


def cluster_address(config: OncallConfig | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The cluster to join: ``ray.address``, else ``RAY_ADDRESS``; None: start a local Ray.

    Never Ray's own guess: a bare ``ray.init()`` joins whatever cluster ``ray start`` left on the
    machine (even a dead one, through ``/tmp/ray/ray_current_cluster``)."""
    environ = os.environ if environ is None else environ
    configured = config.ray.address if config else None
    address = configured or environ.get("RAY_ADDRESS", "").strip()
    return None if not address or address == "local" else address


def _start_ray(config: OncallConfig | None, environment: Mapping[str, str]) -> None:
    settings = config.logging if config else LoggingConfig()
    quiet = settings.ray_output == "files"
    if quiet:
        _quiet_ray_console()  # before ray.init: its own INFO lines too
    address = cluster_address(config)
    if address:
        if environment:
            log.info("joining a cluster: its own environment decides %s", sorted(environment))
        context = _join_cluster(address, log_to_driver=not quiet)
        where = "on the cluster's nodes under"
    else:
        for name, value in environment.items():
            os.environ.setdefault(name, value)  # an explicit setting wins
        cpus = max(MIN_LOCAL_LOGICAL_CPUS, os.cpu_count() or 1)
        log.info("starting a local Ray (%d logical CPUs)", cpus)
        temp_dir = config.ray_sessions_dir if config else None
        context = ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=not quiet,
            **_temp_dir_option(temp_dir),
        )
        where = "in"
    if quiet:
        log.info(
            "Ray's output (its workers' too): %s %s",
            where,
            Path(context.address_info["session_dir"]) / "logs",
        )


def _join_cluster(address: str, *, log_to_driver: bool) -> Any:
    """``ray.init(address)``; a cluster that cannot be reached or refuses the token is one line."""
    log.info("joining the Ray cluster at %s", address)
    _check_reachable(address)
    try:
        return ray.init(address=address, log_to_driver=log_to_driver)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayClusterError(
            f"cannot join the Ray cluster at {address} (ray.address or RAY_ADDRESS): {first_line}. "
            "Is it running? With token auth, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH."
        ) from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the address, where ``ray.init`` would retry for minutes."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(
            f"Ray cluster address {address!r} (ray.address or RAY_ADDRESS) is not host:port"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayClusterError(
            f"cannot reach the Ray cluster at {address} (ray.address or RAY_ADDRESS): {exc}"
        ) from None


def _temp_dir_option(temp_dir: Path | None) -> dict[str, Any]:
    """``_temp_dir`` for ``ray.init`` (documented there) when its socket paths fit."""
    if temp_dir is None:
        return {}
    if len(str(temp_dir)) > MAX_TEMP_DIR_CHARS:
        log.info(
            "%s is too long a path for Ray's sockets (over %d characters): Ray's default temp dir is used",
            temp_dir,
            MAX_TEMP_DIR_CHARS,
        )
        return {}
    temp_dir.mkdir(parents=True, exist_ok=True)
    return {"_temp_dir": str(temp_dir)}


def _quiet_ray_console() -> None:
    """Ray's loggers write to the console through their own handlers; hand their records to the
    process's handlers instead (pipelines.logs drops Ray's below WARNING and formats the rest like
    ours, JSON included). Their file handlers stay. (Ray Data already logs its progress instead of
    drawing bars when stdout is not a terminal; disabling them costs a WARNING line.)"""
    for name in [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] == "ray"]:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if _is_console(h)]:
            logger.removeHandler(handler)
        logger.propagate = True


def _is_console(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)
    )
