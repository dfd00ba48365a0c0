"""The endpoint's lifecycle: up before any version exists, loads one when the alias appears;
feedback is durable across a Serve restart, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from pipelines.config import OncallConfig
from pipelines.data.feedback import FeedbackStore
from pipelines.registry.versions import Registry
from pipelines.training.job import TrainResult
from serve.client import RouterClient
from tests.integration.serving import deployed, serving_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_endpoint_comes_up_without_a_version_routes_without_its_feedback_db_and_survives_a_broken_one(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    """Up before any loadable version (not crash-looping on a broken one); loads a version when
    the alias moves to it; keeps it when the alias moves to a broken one; routes while the
    feedback database is down (feedback 503), stores feedback once it is back."""
    trained, result = trained_run
    blocked = tmp_path / "db"
    blocked.write_text("")  # a file where the database's directory must be: the DB is "down"
    config = serving_config(
        trained, "serve-lifecycle", f"sqlite:///{blocked / 'fb.db'}", **{"serve.alias": "staging"}
    )
    registry = Registry(config)
    registry.register_run(result.run_id, alias=None)
    broken = _broken_version(registry, result.run_id)
    registry.set_alias("staging", broken)
    with deployed(config) as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 503
        early = requests.post(f"{url}/v1/route", json={"title": "db down"}, timeout=30)
        assert early.status_code == 503 and early.headers["Retry-After"]
        assert "staging" in early.json()["detail"] and f"version {broken}" in early.json()["detail"]
        version = registry.register_run(result.run_id, alias="staging").version
        client = RouterClient(url)
        client.wait_ready(timeout_s=30)
        assert client.route({"title": "db down"})["model"]["version"] == version
        down = requests.post(
            f"{url}/v1/feedback", json={"ticket_id": "INC-7", "tenant": "team-a"}, timeout=30
        )
        assert down.status_code == 503 and down.headers["Retry-After"]
        blocked.unlink()
        blocked.mkdir()  # the database is back: the next feedback opens it
        assert client.feedback("INC-7", "team-a")["stored"]
        registry.set_alias("staging", _broken_version(registry, result.run_id))
        deadline = time.monotonic() + 30
        while client.model()["load_error"] is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.model()["version"] == version and client.model()["load_error"]
        assert client.route({"title": "db down"})["model"]["version"] == version
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    assert FeedbackStore(config.feedback_db_url).get("INC-7").tenant == "team-a"


def _broken_version(registry: Registry, run_id: str) -> str:
    """A registered version whose artifacts do not exist (a champion that cannot load)."""
    created = registry.client.create_model_version(
        registry.name, source="file:///nonexistent/model", run_id=run_id
    )
    return str(created.version)


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
