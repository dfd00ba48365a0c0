"""The endpoint's lifecycle: up before any version exists, loads one when the alias appears;
feedback is durable across a Serve restart, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipelines.config import OncallConfig
from pipelines.data.feedback import FeedbackStore
from pipelines.registry.versions import Registry
from pipelines.training.job import TrainResult
from serve.client import RouterClient
from tests.integration.mlflow_server import postgres_url_or_skip, scratch_database
from tests.integration.serving import deployed, serving_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_endpoint_comes_up_without_a_version_and_loads_it_when_the_alias_appears(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    trained, result = trained_run
    config = serving_config(
        trained, "serve-lifecycle", f"sqlite:///{tmp_path / 'fb.db'}", **{"serve.alias": "staging"}
    )
    registry = Registry(config)
    registry.register_run(result.run_id, alias=None)
    with deployed(config) as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 503
        early = requests.post(f"{url}/v1/route", json={"title": "db down"}, timeout=30)
        assert early.status_code == 503 and early.headers["Retry-After"]
        assert "staging" in early.json()["detail"]
        # Feedback does not need a model.
        assert RouterClient(url).feedback("INC-7", "team-a")["stored"]
        version = registry.register_run(result.run_id, alias="staging").version
        RouterClient(url).wait_ready(timeout_s=30)
        assert RouterClient(url).route({"title": "db down"})["model"]["version"] == version


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    with scratch_database(postgres_url_or_skip()) as url:
        yield url


def test_feedback_survives_a_serve_restart(
    trained_run: tuple[OncallConfig, TrainResult], feedback_db_url: str
) -> None:
    trained, result = trained_run
    config = serving_config(trained, "serve-feedback", feedback_db_url)
    Registry(config).register_run(result.run_id, alias="champion")
    with deployed(config) as url:
        client = RouterClient(url)  # no tokens configured: no auth
        ticket = client.route({"title": "kafka consumer lag on orders topic", "ticket_id": "INC-100"})
        client.feedback("INC-100", "team-streaming", source="oncall-ui")
        client.feedback("INC-101", ticket["tenant"])
    stored = FeedbackStore(feedback_db_url)
    try:
        assert stored.get("INC-100").tenant == "team-streaming"  # read back with Serve down
        assert stored.get("INC-100").source == "oncall-ui"
        with deployed(config) as url:
            time.sleep(0.1)
            RouterClient(url).feedback("INC-100", "team-data-platform")  # latest wins
        rows = stored.read()
        assert sorted(rows.ticket_id) == ["INC-100", "INC-101"]
        assert stored.get("INC-100").tenant == "team-data-platform"
    finally:
        stored.close()
