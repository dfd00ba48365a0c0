"""Every answer is counted by route and status: an exception that escapes a handler as 500,
a cancelled request as 499 (no Ray: the middleware on a bare FastAPI app)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serve import metrics


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("a bug")


async def unavailable(request: Request) -> PlainTextResponse:
    return PlainTextResponse("busy", status_code=503)


async def cancelled(request: Request) -> PlainTextResponse:
    raise asyncio.CancelledError


def test_5xx_and_cancellations_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(
        metrics, "_observe_request", lambda route, status, started: seen.append((route, status))
    )
    app = FastAPI(
        routes=[Route("/v1/route", boom), Route("/v1/model", unavailable), Route("/readyz", cancelled)]
    )
    app.middleware("http")(metrics.count_requests(("/v1/route", "/v1/model", "/readyz")))
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/v1/route").status_code == 500
    assert client.get("/v1/model").status_code == 503
    assert client.get("/readyz").status_code == 500  # the test server answers something
    assert client.get("/nope").status_code == 404
    assert seen[:2] == [("/v1/route", "500"), ("/v1/model", "503")]
    assert seen[2] in {("/readyz", "499"), ("/readyz", "500")}  # counted, whichever way it surfaced
    assert seen[3] == ("other", "404")
