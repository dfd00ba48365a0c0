"""Helpers of the Serve tests: a config that serves the session's trained run under its own
registered model name (so other tests' aliases do not interfere), and a deployment that is
always torn down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive
from pipelines.faults import Faults
from tests.conftest import small_config
from tests.integration.mlflow_server import free_port

CONTROLLER_NAME = "SERVE_CONTROLLER_ACTOR"  # ray.serve._private.constants
SERVE_NAMESPACE = "serve"


def serving_config(
    trained: OncallConfig, model_name: str, feedback_db_url: str, **overrides: object
) -> OncallConfig:
    """One small replica, a short alias poll, the trained run's MLflow store."""
    return small_config(
        trained.data_dir,
        **{
            "registry.model_name": model_name,
            "serve.port": free_port(),
            "serve.min_replicas": 1,
            "serve.max_replicas": 1,
            "serve.alias_poll_interval_s": 0.5,
            "serve.feedback_db_url": feedback_db_url,
            **overrides,
        },
    )


@contextmanager
def deployed(config: OncallConfig, faults: Faults | None = None) -> Iterator[str]:
    from ray import serve

    from serve.app import deploy

    try:
        yield deploy(config, faults)
    finally:
        serve.shutdown()
        _wait_controller_gone()


def _wait_controller_gone(timeout_s: float = 60.0) -> None:
    """With direct ingress (throughput-optimized Serve) the controller may outlive
    ``serve.shutdown()`` for a while; the next ``serve.start`` must not connect to it."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Serve controller still exists {timeout_s:.0f} s after serve.shutdown()")


def archive_tickets(archive: Path, n: int) -> list[dict]:
    """``n`` tickets of the archive's last day, as JSON-able dicts of the HTTP contract."""
    last_day = Archive(str(archive)).partitions()[-1]
    frame = pq.read_table(last_day.files[0]).to_pandas().head(n)
    fields = ["ticket_id", "title", "description", "service", "cluster", "region", "source", "severity"]
    return [{k: v for k, v in row.items() if isinstance(v, str)} for row in frame[fields].to_dict("records")]
