"""The clients against the real endpoint while it starts: calls made before anything listens on
the port and before the served alias has a version are answered once a version is loaded, within
their bound; a client with a tiny bound gives up with an error that says why."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import OncallConfig
from pipelines.registry.versions import Registry
from pipelines.training.job import TrainResult
from serve.client import AsyncRouterClient, RetryPolicy, RouterClient, RouterUnavailableError
from tests.integration.serving import deployed, serving_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

ALIAS = "client-test"
TICKET = {"ticket_id": "INC-CLIENT-1", "title": "kafka consumer lag on orders topic"}
# Long enough for Serve to start and load a version on 2 busy cores; short polls so the test ends soon.
PATIENT = RetryPolicy(max_attempts=None, max_elapsed_s=180.0, backoff_s=0.2, max_wait_s=1.0)
TINY = RetryPolicy(max_elapsed_s=1.0, backoff_s=0.1, max_wait_s=0.3)


def _route_sync(url: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    with RouterClient(url, retry=PATIENT) as client:
        return client.route(TICKET), time.monotonic() - started


async def _route_async(url: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    async with AsyncRouterClient(url, retry=PATIENT) as client:
        return await client.route(TICKET), time.monotonic() - started


def _answers(pending: list[Future]) -> list[tuple[dict[str, Any], float]]:
    return [future.result(timeout=PATIENT.max_elapsed_s + 30) for future in pending]


def test_clients_called_before_the_endpoint_starts_get_answers_within_their_bound(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained, result = trained_run
    config = serving_config(
        trained, "serve-client", f"sqlite:///{tmp_path / 'fb.db'}", **{"serve.alias": ALIAS}
    )
    registry = Registry(config)
    url = f"http://127.0.0.1:{config.serve.port}"
    caplog.set_level(logging.INFO, logger="serve.client")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="early") as pool:
        # Both calls start before anything listens on the port.
        pending = [pool.submit(_route_sync, url), pool.submit(asyncio.run, _route_async(url))]
        with deployed(config) as served_url:
            assert served_url == url
            assert not [f.exception() for f in pending if f.done()]  # still waiting for a version
            started = time.monotonic()
            with pytest.raises(RouterUnavailableError, match=f"HTTP 503: .*{ALIAS}") as raised:
                RouterClient(url, retry=TINY).route(TICKET)
            assert time.monotonic() - started < 3 and raised.value.attempts >= 2
            version = registry.register_run(result.run_id, alias=ALIAS).version
            answers = _answers(pending)
    for answer, seconds in answers:
        assert answer["ticket_id"] == TICKET["ticket_id"] and answer["model"]["version"] == version
        assert seconds < PATIENT.max_elapsed_s
    retries = [(r.threadName, r.getMessage()) for r in caplog.records if r.threadName.startswith("early")]
    for failure in ("ConnectError", "HTTP 503"):  # nothing listening yet; no version yet
        assert len({thread for thread, line in retries if failure in line}) == 2, retries  # both clients
