"""Python clients of the routing endpoint: :class:`RouterClient` (sync) and
:class:`AsyncRouterClient` (asyncio), on httpx, sharing one request, answer and retry policy.

What is retried, with exponential back-off and jitter, bounded by attempts and total time
(:class:`RetryPolicy`):

- a connection that could not be made (refused, connect timeout, no pooled connection free):
  the request never left, so every call is retried;
- 503 and 429: the server turned the request away without acting on it (a replica answers 503
  with ``Retry-After`` until its alias has a version loaded), so every call is retried, after
  ``Retry-After`` (capped by ``max_wait_s``) or else the back-off; so is the 404 of Ray Serve's
  proxy for a path no application serves yet (between ``serve.start`` and the end of a deploy);
- a failure after the request may have been handled (a read timeout, a dropped connection,
  502/504 from a proxy): only calls without side effects (route, batch, model, readiness).
  Feedback is not retried then: it is an upsert where the latest answer for a ticket wins, so a
  late duplicate of an answer could overwrite a newer one that someone sent meanwhile;
- never any other 4xx or 5xx: the same request would fail the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Turned away before anything ran: safe to repeat for every call.
REFUSED_STATUSES = frozenset({429, 503})
# A proxy lost the answer: the call may have run.
AMBIGUOUS_STATUSES = frozenset({502, 504})
# Ray Serve's proxy says this in its 404 while no application serves the path (our app's own
# 404 is JSON): the request reached no application.
SERVE_NOT_ROUTED = "/-/routes for available routes"
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

Outcome = httpx.Response | httpx.TransportError


class RouterError(Exception):
    """A call to the routing endpoint that did not get its answer."""


class RouterHTTPError(RouterError):
    """The endpoint answered with an error that retrying would not change (e.g. 401, 422)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class RouterUnavailableError(RouterError):
    """No answer within the retry bounds, or a failure that is unsafe to retry."""

    def __init__(self, call: str, attempts: int, elapsed_s: float, last: str, why: str) -> None:
        super().__init__(
            f"{call}: no answer after {attempts} attempt(s) in {elapsed_s:.1f} s ({why}); last: {last}"
        )
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last = last


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a call is retried (what is retried: see the module docstring)."""

    max_attempts: int | None = 10  # None: bounded by time only
    max_elapsed_s: float = 60.0  # no attempt starts, and no wait ends, later than this
    backoff_s: float = 0.5  # the first back-off; it doubles with every attempt
    max_wait_s: float = 10.0  # cap on one wait, back-off and Retry-After alike
    jitter: float = 0.5  # a back-off is shortened by up to this fraction, at random

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None)")
        if min(self.max_elapsed_s, self.backoff_s, self.max_wait_s) <= 0 or not 0 <= self.jitter <= 1:
            raise ValueError("max_elapsed_s, backoff_s and max_wait_s must be > 0, jitter in [0, 1]")

    def wait_s(self, attempt: int, retry_after_s: float | None, draw: float) -> float:
        """The wait after failed attempt number ``attempt`` (from 1): the server's
        ``Retry-After`` if it sent one, else the back-off; ``draw`` is uniform in [0, 1)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_wait_s)
        backoff = min(self.backoff_s * 2 ** (attempt - 1), self.max_wait_s)
        return backoff * (1 - self.jitter * draw)

    def gives_up(self, attempt: int, elapsed_s: float, wait_s: float) -> bool:
        out_of_attempts = self.max_attempts is not None and attempt >= self.max_attempts
        return out_of_attempts or elapsed_s + wait_s > self.max_elapsed_s

    def polling(self, timeout_s: float, poll_s: float) -> RetryPolicy:
        """Every ``poll_s`` (shortened by the jitter) for ``timeout_s``: waiting for readiness."""
        return replace(self, max_attempts=None, max_elapsed_s=timeout_s, backoff_s=poll_s, max_wait_s=poll_s)


def retry_after_s(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


@dataclass(frozen=True)
class Call:
    """One endpoint call: what is sent, whether it changes state, how its answer is unwrapped."""

    method: str
    path: str
    body: Any = None
    side_effects: bool = False  # then retried only when the request surely did not run
    result_key: str | None = None
    polling: bool = False  # refusals are the expected answer while waiting: retries log at DEBUG

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def retryable(self, outcome: Outcome) -> bool:
        if isinstance(outcome, httpx.Response):
            status = outcome.status_code
            refused = status in REFUSED_STATUSES or (status == 404 and SERVE_NOT_ROUTED in outcome.text)
            return refused or (status in AMBIGUOUS_STATUSES and not self.side_effects)
        if isinstance(outcome, _NOT_SENT):
            return True
        return isinstance(outcome, _MAYBE_SENT) and not self.side_effects

    def result(self, response: httpx.Response) -> Any:
        data = response.json()
        return data[self.result_key] if self.result_key else data


def route_call(ticket: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/route", dict(ticket))


def route_batch_call(tickets: Sequence[Mapping[str, Any]]) -> Call:
    return Call("POST", "/v1/route/batch", {"tickets": [dict(t) for t in tickets]}, result_key="results")


def feedback_call(ticket_id: str, tenant: str, source: str | None) -> Call:
    body = {"ticket_id": ticket_id, "tenant": tenant, "source": source}
    return Call("POST", "/v1/feedback", body, side_effects=True)


MODEL_CALL = Call("GET", "/v1/model")
READY_CALL = Call("GET", "/readyz", polling=True)


class Attempts:
    """The attempts of one call: the timeout of each, and after each outcome whether to
    answer, wait and retry, or fail. Both clients drive it; only their I/O differs."""

    def __init__(
        self, call: Call, policy: RetryPolicy, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.call = call
        self.policy = policy
        self.timeout_s = timeout_s
        self.clock = clock
        self.started = clock()
        self.count = 0
        self._rng = random.Random()

    def begin(self) -> float:
        """Counts an attempt; its timeout: the client's, cut to the time left (at least 0.1 s)."""
        self.count += 1
        left = self.policy.max_elapsed_s - (self.clock() - self.started)
        return max(0.1, min(self.timeout_s, left))

    def after(self, outcome: Outcome) -> httpx.Response | float:
        """The response if ``outcome`` is the answer, else the seconds to wait before the next
        attempt; raises :class:`RouterError` when the call has failed for good."""
        if isinstance(outcome, httpx.Response) and outcome.status_code < 400:
            return outcome
        elapsed = self.clock() - self.started
        last = _describe(outcome)
        if not self.call.retryable(outcome):
            if isinstance(outcome, httpx.Response):
                raise RouterHTTPError(outcome.status_code, _detail(outcome))
            why = (
                "not retried: the call may have run" if isinstance(outcome, _MAYBE_SENT) else "not transient"
            )
            raise RouterUnavailableError(str(self.call), self.count, elapsed, last, why) from outcome
        hint = outcome.headers.get("Retry-After") if isinstance(outcome, httpx.Response) else None
        wait = self.policy.wait_s(self.count, retry_after_s(hint), self._rng.random())
        if self.policy.gives_up(self.count, elapsed, wait):
            why = (
                f"the last of {self.count} attempts"
                if self.count == self.policy.max_attempts
                else f"waiting {wait:.1f} s more would pass the {self.policy.max_elapsed_s:g} s bound"
            )
            raise RouterUnavailableError(str(self.call), self.count, elapsed, last, why) from (
                outcome if isinstance(outcome, Exception) else None
            )
        level = logging.DEBUG if self.call.polling else logging.INFO
        log.log(level, "%s: %s; attempt %d in %.1f s", self.call, last, self.count + 1, wait)
        return wait


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, httpx.Response):
        return f"HTTP {outcome.status_code}: {_detail(outcome)}"
    return f"{type(outcome).__name__}: {outcome or 'no message'}"


class _Client:
    """What both clients hold: the address, the auth header, the timeout and the retry policy."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float, retry: RetryPolicy | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _attempts(self, call: Call, policy: RetryPolicy | None = None) -> Attempts:
        return Attempts(call, policy or self.retry, self.timeout_s)


class RouterClient(_Client):
    """The sync client: ``RouterClient("http://127.0.0.1:8000", token=None).route({...})``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout_s, retry)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, transport=transport)

    def route(self, ticket: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(route_call(ticket))

    def route_batch(self, tickets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self._call(route_batch_call(tickets))

    def feedback(self, ticket_id: str, tenant: str, source: str | None = None) -> dict[str, Any]:
        return self._call(feedback_call(ticket_id, tenant, source))

    def model(self) -> dict[str, Any]:
        return self._call(MODEL_CALL)

    def ready(self) -> bool:
        """One probe of ``/readyz``, no retry."""
        try:
            return self.http.get(READY_CALL.path, timeout=self.timeout_s).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
        """Polls ``/readyz`` until 200; :class:`RouterUnavailableError` after ``timeout_s``."""
        self._call(READY_CALL, self.retry.polling(timeout_s, poll_s))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, call: Call, policy: RetryPolicy | None = None) -> Any:
        attempts = self._attempts(call, policy)
        while True:
            timeout = attempts.begin()
            try:
                outcome: Outcome = self.http.request(call.method, call.path, json=call.body, timeout=timeout)
            except httpx.TransportError as exc:
                outcome = exc
            step = attempts.after(outcome)
            if isinstance(step, httpx.Response):
                return call.result(step)
            time.sleep(step)


class AsyncRouterClient(_Client):
    """The asyncio client, same methods as :class:`RouterClient`, awaited:
    ``async with AsyncRouterClient(url) as client: await client.route({...})``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout_s, retry)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, transport=transport)

    async def route(self, ticket: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(route_call(ticket))

    async def route_batch(self, tickets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return await self._call(route_batch_call(tickets))

    async def feedback(self, ticket_id: str, tenant: str, source: str | None = None) -> dict[str, Any]:
        return await self._call(feedback_call(ticket_id, tenant, source))

    async def model(self) -> dict[str, Any]:
        return await self._call(MODEL_CALL)

    async def ready(self) -> bool:
        """One probe of ``/readyz``, no retry."""
        try:
            return (await self.http.get(READY_CALL.path, timeout=self.timeout_s)).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
        """Polls ``/readyz`` until 200; :class:`RouterUnavailableError` after ``timeout_s``."""
        await self._call(READY_CALL, self.retry.polling(timeout_s, poll_s))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _call(self, call: Call, policy: RetryPolicy | None = None) -> Any:
        attempts = self._attempts(call, policy)
        while True:
            timeout = attempts.begin()
            try:
                outcome: Outcome = await self.http.request(
                    call.method, call.path, json=call.body, timeout=timeout
                )
            except httpx.TransportError as exc:
                outcome = exc
            step = attempts.after(outcome)
            if isinstance(step, httpx.Response):
                return call.result(step)
            await asyncio.sleep(step)
