"""A real `mlflow server` on 127.0.0.1 with a PostgreSQL backend store: the production shape."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

POSTGRES_ENV = "ONCALL_TEST_POSTGRES_URL"
STARTUP_TIMEOUT_S = 90


def postgres_url_or_skip() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is not set: no PostgreSQL for the production-shape tests (.ci/run sets it)"
        )
    return url


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new database on the server for this test session, dropped afterwards."""
    name = f"oncall_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(
            sqlalchemy.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def wait_until_answering(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Polls ``url`` until it answers 200; fails with the server's log if the process exits or
    ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer (server log follows):\n{log.read_text()[-3000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def mlflow_server(backend_url: str, artifacts: Path) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_url,
        "--artifacts-destination", artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = artifacts.parent / "mlflow-server.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/health", process, log, STARTUP_TIMEOUT_S)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def mlflow_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs pointed at ``uri`` for the block (for MLflow's
    own loaders such as ``mlflow.pyfunc.load_model("models:/…")``), then exactly as before: the
    setters also export ``MLFLOW_*_URI`` to the environment, and restoring through them would
    leave a registry URI behind for later tests and the processes they start."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_globals = tracking_utils._tracking_uri, registry_utils._registry_uri
    saved_environment = {
        name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved_globals
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
