"""One lock for nightly, promote, rollback and rescore: a file lock on the embedded default, a
PostgreSQL advisory lock when a store is PostgreSQL; a held lock is exit code 75, one line."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.config import OncallConfig
from pipelines.errors import LockHeldError
from pipelines.registry.lock import LOCK_FILE, jobs_lock, lock_database, lock_key
from tests.integration.mlflow_server import postgres_url_or_skip, scratch_database
from tests.unit.registry.jobs_cli import config_at, error_lines, run_cli


def in_another_thread(config: OncallConfig, job: str) -> BaseException | None:
    """What taking the lock in another thread (another holder) raises, None if it got it."""
    raised: list[BaseException] = []

    def take() -> None:
        try:
            with jobs_lock(config, job):
                pass
        except BaseException as exc:  # handed to the test thread
            raised.append(exc)

    worker = threading.Thread(target=take)
    worker.start()
    worker.join(timeout=60)
    return raised[0] if raised else None


def test_the_file_lock_refuses_another_holder_names_the_first_and_is_reentrant(tmp_path: Path) -> None:
    config = config_at(tmp_path)
    assert lock_database(config) is None
    with jobs_lock(config, "nightly"):
        with jobs_lock(config, "promote"):  # the nightly's own promote: same thread, no refusal
            refused = in_another_thread(config, "rollback")
        assert isinstance(refused, LockHeldError)
        assert f"another job holds {tmp_path.resolve() / LOCK_FILE} (nightly pid {os.getpid()} since" in str(
            refused
        )
        assert isinstance(in_another_thread(config, "rescore"), LockHeldError)  # still held
    assert in_another_thread(config, "rescore") is None  # released


@pytest.mark.parametrize(
    "command", [["rollback"], ["promote"], ["rescore"], ["nightly", "--date", "2026-10-09"]]
)
def test_a_job_refused_by_the_lock_prints_one_line_and_exits_75(tmp_path: Path, command: list[str]) -> None:
    with jobs_lock(config_at(tmp_path), "nightly"):
        done = run_cli("--data-dir", str(tmp_path), *command)
    assert done.returncode == 75, done.stderr[-2000:]
    assert len(error_lines(done)) == 1 and "Traceback" not in done.stderr
    assert f"another job holds {tmp_path.resolve() / LOCK_FILE} (nightly pid {os.getpid()}" in done.stderr


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with scratch_database(postgres_url_or_skip()) as url:
        yield url


def test_the_advisory_lock_is_one_per_model_across_connections(
    postgres_database: str, tmp_path: Path
) -> None:
    config = config_at(tmp_path, **{"serve.feedback_db_url": postgres_database})
    assert lock_database(config) == postgres_database
    key = lock_key(config.registry.model_name)
    assert key != lock_key("another-model") and 0 <= key < 2**63
    holder = sa.create_engine(
        postgres_database,
        poolclass=sa.pool.NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"application_name": "held-by-the-test"},
    )
    with holder.connect() as connection:
        assert connection.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        refused = in_another_thread(config, "promote")
        assert isinstance(refused, LockHeldError) and "held-by-the-test" in str(refused)
        assert f"PostgreSQL advisory lock {key}" in str(refused)
        done = run_cli(
            "--data-dir", str(tmp_path), "rollback", env={"ONCALL_SERVE__FEEDBACK_DB_URL": postgres_database}
        )
        assert done.returncode == 75 and "held-by-the-test" in done.stderr, done.stderr[-2000:]
        other_model = config.model_copy(
            update={"registry": config.registry.model_copy(update={"model_name": "another-model"})}
        )
        assert in_another_thread(other_model, "promote") is None  # a lock per registered model
        connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    holder.dispose()
    with jobs_lock(config, "nightly"):  # free again; and our own connection holds it now
        refused = in_another_thread(config, "rescore")
        assert isinstance(refused, LockHeldError) and f"oncall-router nightly pid {os.getpid()}" in str(
            refused
        )
    assert in_another_thread(config, "rescore") is None
