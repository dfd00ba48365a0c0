"""The gate before the body (no Ray): token first, then the body's size, from Content-Length
and while streaming; it fails closed until configured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serve import gate
from serve.gate import Gate, GateSettings, token_id

TOKEN = "a-test-token-0123456789"
LIMIT = 4096
read_bodies: list[int] = []


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    read_bodies.append(len(body))
    sender = getattr(request.state, "token_id", None)
    return JSONResponse({"bytes": len(body), **({"token_id": sender} if sender else {})})


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = Starlette(routes=[Route("/v1/route", echo, methods=["POST"]), Route("/healthz", echo)])
    app.add_middleware(Gate)
    gate.configure(GateSettings.of([TOKEN], LIMIT))
    read_bodies.clear()
    yield TestClient(app)
    gate._settings = None


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_token_is_checked_before_the_body_is_read(client: TestClient) -> None:
    missing = client.post("/v1/route", content=b"{}")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert (
        client.post(
            "/v1/route", content=b"x" * 10 * LIMIT, headers={"Authorization": "Basic dTpw"}
        ).status_code
        == 401
    )
    assert client.post("/v1/route", content=b"{}", headers=auth("wrong-token-0123456789")).status_code == 403
    assert read_bodies == []  # the app never saw those requests
    accepted = client.post("/v1/route", content=b"{}", headers=auth()).json()
    assert accepted == {"bytes": 2, "token_id": token_id(TOKEN.encode())}
    assert TOKEN not in accepted["token_id"] and len(accepted["token_id"]) == len("sha256:") + 16
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_a_body_over_the_cap_is_413_declared_or_streamed(client: TestClient) -> None:
    declared = client.post("/v1/route", content=b"x" * (LIMIT + 1), headers=auth())
    assert declared.status_code == 413 and "serve.max_body_bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to trust
        for _ in range(10):
            yield b"x" * 1000

    streamed = client.post("/v1/route", content=chunks(), headers=auth())
    assert streamed.status_code == 413
    assert client.post("/v1/route", content=b"x" * LIMIT, headers=auth()).json()["bytes"] == LIMIT
    bad_length = client.post("/v1/route", content=b"{}", headers={**auth(), "Content-Length": "abc"})
    assert bad_length.status_code in (400, 422)
    assert read_bodies == [LIMIT]


def test_unconfigured_gate_fails_closed(client: TestClient) -> None:
    gate._settings = None
    answer = client.post("/v1/route", content=b"{}", headers=auth())
    assert answer.status_code == 503 and answer.headers["retry-after"]


def test_no_tokens_means_open(client: TestClient) -> None:
    gate.configure(GateSettings.of([], LIMIT))
    assert client.post("/v1/route", content=b"{}").status_code == 200
