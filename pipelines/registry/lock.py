"""One lock for the jobs that move aliases or write outputs: nightly, promote, rollback, rescore.

Two of them at once could interleave alias moves (a rollback between a gate's decision and its
promotion) or commit outputs against a champion that just changed. The lock lives where every
machine that runs a job can see it:

- a PostgreSQL **advisory lock** (``pg_try_advisory_lock``, on a key derived from the registered
  model's name) when the tracking store or the feedback store is PostgreSQL: held by one
  connection, released by the server when that connection ends (the process died);
- else an OS **file lock** (``flock``) on ``<data_dir>/jobs.lock``, the embedded default: released
  by the kernel when the process dies.

Never waits: a held lock is a :class:`~pipelines.errors.LockHeldError` (exit code 75) naming the
holder. Re-entrant within one thread, so the nightly promotes and rescores under its own lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa

from pipelines.config import OncallConfig
from pipelines.errors import LockHeldError, RegistryError

LOCK_FILE = "jobs.lock"
_POSTGRES_SCHEMES = ("postgresql",)
_HOLDER_QUERY = sa.text(
    "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low "
    "AND l.objsubid = 1"
)
_MAX_APPLICATION_NAME = 63  # PostgreSQL's NAMEDATALEN - 1
_held = threading.local()


def lock_key(model_name: str) -> int:
    """The advisory lock's key: a non-negative bigint from the registered model's name."""
    digest = hashlib.sha256(f"oncall-router jobs: {model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def lock_database(config: OncallConfig) -> str | None:
    """The PostgreSQL database the lock lives in (the tracking store's, else the feedback
    store's); None: a file lock under the data dir."""
    for url in (config.tracking_uri, config.feedback_db_url):
        if url.split(":", 1)[0].split("+", 1)[0] in _POSTGRES_SCHEMES:
            return url
    return None


@contextmanager
def jobs_lock(config: OncallConfig, job: str) -> Iterator[None]:
    """The jobs' lock for the block (``job`` names the holder in a refusal)."""
    database = lock_database(config)
    where = database or str(config.data_dir / LOCK_FILE)
    held: set[str] = _held.__dict__.setdefault("places", set())
    if where in held:  # this thread holds it already (the nightly's promote and rescore)
        yield
        return
    name = config.registry.model_name
    with _advisory_lock(database, name, job) if database else _file_lock(config.data_dir / LOCK_FILE, job):
        held.add(where)
        try:
            yield
        finally:
            held.discard(where)


def _holder_text(job: str) -> str:
    return f"{job} pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"


@contextmanager
def _file_lock(path: Path, job: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "holder unknown"
            raise LockHeldError(f"another job holds {path} ({holder}): try again when it finishes") from None
        handle.seek(0)
        handle.truncate()
        handle.write(_holder_text(job) + "\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(url: str, model_name: str, job: str) -> Iterator[None]:
    key = lock_key(model_name)
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    engine = sa.create_engine(
        url,
        poolclass=sa.pool.NullPool,
        isolation_level="AUTOCOMMIT",  # no transaction left open for hours; the lock is the session's
        connect_args={"application_name": f"oncall-router {_holder_text(job)}"[:_MAX_APPLICATION_NAME]},
    )
    try:
        with _connect(engine, shown) as connection:
            if not connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
                raise LockHeldError(
                    f"another job holds the jobs' lock of '{model_name}' ({_advisory_holder(connection, key)}; "
                    f"PostgreSQL advisory lock {key} in {shown}): try again when it finishes"
                )
            try:
                yield
            finally:
                with suppress(sa.exc.DBAPIError):  # a lost connection released it already
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def _connect(engine: sa.Engine, shown: str) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.DBAPIError as exc:
        raise RegistryError(
            f"the jobs' lock in {shown} is unreachable: {str(exc.orig).strip()[:300]}"
        ) from None


def _advisory_holder(connection: sa.Connection, key: int) -> str:
    """Who holds the advisory lock, as far as this role may see (application name, start)."""
    row = connection.execute(_HOLDER_QUERY, {"high": key >> 32, "low": key & 0xFFFF_FFFF}).first()
    if row is None or not row.application_name:
        return "holder unknown"
    started = f" connected {row.backend_start:%Y-%m-%dT%H:%M:%S%z}" if row.backend_start else ""
    return f"{row.application_name}{started}"
