"""The routing client's retry policy, against a scripted endpoint (httpx.MockTransport): what is
retried, how long it waits, that it gives up within its bounds; the sync and the async client run
the same cases."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from serve.client import (
    MODEL_CALL,
    AsyncRouterClient,
    Attempts,
    RetryPolicy,
    RouterClient,
    RouterHTTPError,
    RouterUnavailableError,
    feedback_call,
    retry_after_s,
    route_call,
)

URL = "http://router.test"
SERVE_ROUTES_HINT = "http://.../-/routes for available routes"  # ray.serve._private.proxy
FAST = RetryPolicy(backoff_s=0.01, max_wait_s=0.05, max_elapsed_s=5.0)
ANSWERS: dict[str, Any] = {
    "/v1/route": {"ticket_id": "INC-1", "tenant": "10001", "top_k": []},
    "/v1/route/batch": {"results": [{"ticket_id": "INC-1", "tenant": "10001"}]},
    "/v1/feedback": {"ticket_id": "INC-1", "tenant": "10001", "stored": True},
    "/v1/model": {"name": "oncall-router", "version": "3"},
    "/readyz": {"status": "ready"},
}
Step = int | tuple[int, dict[str, str]] | type[httpx.TransportError]


class Endpoint:
    """Answers with its steps in turn (a status, a status and headers, or a transport error to
    raise); the last step repeats. Records every request."""

    def __init__(self, *steps: Step) -> None:
        self.steps = steps
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if isinstance(step, type):
            raise step("scripted failure", request=request)
        status, headers = step if isinstance(step, tuple) else (step, {})
        body = ANSWERS[request.url.path] if status < 400 else {"detail": f"scripted {status}"}
        return httpx.Response(status, headers=headers, json=body)


class Driver:
    """Calls the sync or the async client the same way (an async call runs to completion)."""

    def __init__(self, client: RouterClient | AsyncRouterClient) -> None:
        self.client = client

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        return asyncio.run(result) if inspect.iscoroutine(result) else result


Connect = Callable[..., Driver]
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(params=[RouterClient, AsyncRouterClient], ids=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Connect:
    def make(endpoint: Handler, retry: RetryPolicy = FAST, token: str | None = None) -> Driver:
        return Driver(request.param(URL, token=token, retry=retry, transport=httpx.MockTransport(endpoint)))

    return make


def test_answers_and_their_shapes(connect: Connect) -> None:
    endpoint = Endpoint(200)
    call = connect(endpoint, token="tok")
    assert call("route", {"title": "db down"}) == ANSWERS["/v1/route"]
    assert call("route_batch", [{"title": "db down"}]) == ANSWERS["/v1/route/batch"]["results"]
    assert call("feedback", "INC-1", "10001", source="ui")["stored"] is True
    assert call("model")["version"] == "3"
    assert call("ready") is True
    assert [r.headers["Authorization"] for r in endpoint.requests] == ["Bearer tok"] * 5
    assert endpoint.requests[2].read() == b'{"ticket_id":"INC-1","tenant":"10001","source":"ui"}'


def test_a_503_is_retried_until_the_version_is_loaded(connect: Connect) -> None:
    endpoint = Endpoint((503, {"Retry-After": "0"}), (503, {"Retry-After": "0"}), 200)
    assert connect(endpoint)("route", {"title": "db down"})["tenant"] == "10001"
    assert len(endpoint.requests) == 3


ROUTE = ("route", {"title": "db down"})
FEEDBACK = ("feedback", "INC-1", "10001")


@pytest.mark.parametrize("call", [ROUTE, FEEDBACK], ids=["route", "feedback"])
def test_a_connection_that_was_never_made_is_retried_for_every_call(connect: Connect, call: tuple) -> None:
    endpoint = Endpoint(httpx.ConnectError, httpx.ConnectTimeout, 200)
    assert connect(endpoint)(*call)["ticket_id"] == "INC-1"
    assert len(endpoint.requests) == 3


@pytest.mark.parametrize("failure", [httpx.ReadTimeout, httpx.RemoteProtocolError, 502, 504])
def test_a_call_that_may_have_run_is_retried_only_without_side_effects(
    connect: Connect, failure: Step
) -> None:
    routed = Endpoint(failure, 200)
    assert connect(routed)(*ROUTE)["tenant"] == "10001"
    assert len(routed.requests) == 2
    stored = Endpoint(failure, 200)
    # Feedback is a latest-wins upsert: a late duplicate could overwrite someone's newer answer.
    expected = RouterHTTPError if isinstance(failure, int) else RouterUnavailableError
    with pytest.raises(expected, match="HTTP 50" if isinstance(failure, int) else "not retried"):
        connect(stored)(*FEEDBACK)
    assert len(stored.requests) == 1


def test_the_serve_proxys_404_before_the_app_is_deployed_is_retried(connect: Connect) -> None:
    def endpoint(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:  # what Ray Serve's proxy answers until an application serves the path
            return httpx.Response(404, text=f"Path '{request.url.path}' not found. Ping {SERVE_ROUTES_HINT}.")
        return httpx.Response(200, json=ANSWERS[request.url.path])

    seen: list[httpx.Request] = []
    assert connect(endpoint)(*FEEDBACK)["stored"] is True
    assert len(seen) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 500])
def test_other_errors_are_never_retried(connect: Connect, status: int) -> None:
    endpoint = Endpoint(status, 200)
    with pytest.raises(RouterHTTPError) as raised:
        connect(endpoint)(*ROUTE)
    assert (raised.value.status, raised.value.detail) == (status, f"scripted {status}")
    assert len(endpoint.requests) == 1


def test_retry_after_is_honoured(connect: Connect) -> None:
    endpoint = Endpoint((503, {"Retry-After": "1"}), 200)
    started = time.monotonic()
    connect(endpoint, retry=RetryPolicy(backoff_s=0.01, max_wait_s=10))(*ROUTE)
    assert 0.95 < time.monotonic() - started < 3


def test_gives_up_at_the_time_bound_with_a_clear_error(connect: Connect) -> None:
    endpoint = Endpoint((503, {"Retry-After": "30"}))  # capped by max_wait_s
    started = time.monotonic()
    with pytest.raises(
        RouterUnavailableError, match=r"POST /v1/route: no answer after \d+ attempt"
    ) as raised:
        connect(endpoint, retry=RetryPolicy(max_elapsed_s=0.5, max_wait_s=0.1))(*ROUTE)
    assert time.monotonic() - started < 1.5
    assert raised.value.last == "HTTP 503: scripted 503"
    assert 3 <= raised.value.attempts == len(endpoint.requests) <= 6


def test_gives_up_after_the_last_attempt(connect: Connect) -> None:
    endpoint = Endpoint(httpx.ConnectError)
    with pytest.raises(RouterUnavailableError, match="ConnectError: scripted failure") as raised:
        connect(endpoint, retry=RetryPolicy(max_attempts=3, backoff_s=0.01))(*ROUTE)
    assert raised.value.attempts == len(endpoint.requests) == 3
    assert isinstance(raised.value.__cause__, httpx.ConnectError)


def test_wait_ready_polls_until_ready_or_its_timeout(connect: Connect) -> None:
    endpoint = Endpoint(httpx.ConnectError, 503, 503, 200)
    connect(endpoint)("wait_ready", timeout_s=5, poll_s=0.01)
    assert len(endpoint.requests) == 4
    with pytest.raises(RouterUnavailableError, match="GET /readyz"):
        connect(Endpoint(503))("wait_ready", timeout_s=0.2, poll_s=0.01)
    assert connect(Endpoint(503))("ready") is False
    assert connect(Endpoint(httpx.ConnectError))("ready") is False


def test_back_off_doubles_up_to_the_cap_and_jitter_only_shortens_it() -> None:
    policy = RetryPolicy(backoff_s=0.5, max_wait_s=5.0, jitter=0.5)
    assert [policy.wait_s(n, None, draw=0.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 5, 5]
    assert policy.wait_s(3, None, draw=0.999) == pytest.approx(2 * 0.5005)
    assert policy.wait_s(1, 3.0, draw=0.9) == 3.0  # Retry-After, no jitter
    assert policy.wait_s(1, 60.0, draw=0.0) == 5.0  # capped


def test_gives_up_by_attempts_or_by_time() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed_s=10.0)
    assert not policy.gives_up(attempt=2, elapsed_s=5.0, wait_s=4.0)
    assert policy.gives_up(attempt=3, elapsed_s=0.0, wait_s=0.1)
    assert policy.gives_up(attempt=1, elapsed_s=7.0, wait_s=4.0)  # the wait would end too late
    assert not RetryPolicy(max_attempts=None).gives_up(attempt=10_000, elapsed_s=0.0, wait_s=1.0)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2.0)


def test_each_attempt_gets_at_most_the_time_left() -> None:
    now = [100.0]
    attempts = Attempts(MODEL_CALL, RetryPolicy(max_elapsed_s=10.0), timeout_s=30.0, clock=lambda: now[0])
    assert attempts.begin() == 10.0
    now[0] += 7.5
    assert attempts.begin() == 2.5
    assert attempts.count == 2


def test_the_wait_follows_the_answer() -> None:
    policy = RetryPolicy(backoff_s=0.5, max_wait_s=8.0, jitter=0.0)
    attempts = Attempts(route_call({"title": "t"}), policy, timeout_s=30.0)
    attempts.begin()
    assert attempts.after(httpx.Response(503, headers={"Retry-After": "5"}, json={})) == 5.0
    attempts.begin()
    assert attempts.after(httpx.Response(503, json={})) == 1.0  # no Retry-After: back-off
    answer = httpx.Response(200, json={})
    assert attempts.after(answer) is answer
    stored = Attempts(feedback_call("INC-1", "t", None), policy, timeout_s=30.0)
    stored.begin()
    assert stored.after(httpx.Response(503, json={})) == 0.5  # refused before it ran: safe


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = dt.datetime(2026, 11, 29, 18, 0, tzinfo=dt.UTC)
    assert retry_after_s("5", now) == 5.0
    assert retry_after_s("Sun, 29 Nov 2026 18:00:07 GMT", now) == 7.0
    assert retry_after_s("Sun, 29 Nov 2026 17:00:00 GMT", now) == 0.0  # in the past: now
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None
