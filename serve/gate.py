"""The checks that run before a request's body is read (a pure ASGI middleware): the bearer
token, then the body's size. A caller without a token learns nothing about the schema and costs
no parsing; a body over ``serve.max_body_bytes`` is refused from its Content-Length, or once the
streamed bytes pass the cap, without buffering more.

The ingress replica configures it (:func:`configure`) in its constructor: FastAPI builds its
middleware stack from classes, so the settings live in this module, one set per process (one
ingress per replica process). Until then every request is 503: it never fails open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths that answer without a token: probes and the API description.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


@dataclass(frozen=True)
class GateSettings:
    tokens: tuple[bytes, ...]  # empty: auth is off (only where the operator chose that)
    max_body_bytes: int

    @classmethod
    def of(cls, tokens: Iterable[str], max_body_bytes: int) -> GateSettings:
        return cls(tuple(token.encode() for token in tokens), max_body_bytes)


def token_id(token: bytes) -> str:
    """Names a token in stored data (the feedback history) without revealing it."""
    return "sha256:" + hashlib.sha256(token).hexdigest()[:16]


_settings: GateSettings | None = None


def configure(settings: GateSettings) -> None:
    global _settings
    _settings = settings


class BodyTooLargeError(Exception):
    """The streamed body passed ``max_body_bytes``."""


class Gate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = _settings
        if settings is None:
            await _problem(send, 503, "starting up; retry shortly", {"retry-after": "1"})
            return
        denied = _check_token(settings.tokens, scope)
        if denied is not None:
            await _problem(send, *denied)
            return
        if scope["method"] in BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(scope, receive, settings.max_body_bytes)
        except BodyTooLargeError:
            limit = settings.max_body_bytes
            await _problem(send, 413, f"request body over {limit} bytes (serve.max_body_bytes)", {})
            return
        except ValueError as exc:
            await _problem(send, 400, str(exc), {})
            return
        await self.app(scope, _replay(body, receive), send)


def _check_token(tokens: tuple[bytes, ...], scope: Scope) -> tuple[int, str, dict[str, str]] | None:
    """None when the request may go on, else (status, detail, headers)."""
    if not tokens or scope["path"] in OPEN_PATHS:
        return None
    header = _header(scope, b"authorization")
    scheme, _, offered = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not offered.strip():
        return 401, "missing 'Authorization: Bearer <token>' header", {"www-authenticate": "Bearer"}
    candidate = offered.strip().encode()
    # Compare against every token (constant time each) so timing reveals nothing.
    if not any([hmac.compare_digest(candidate, token) for token in tokens]):
        return 403, "the bearer token is not accepted", {}
    scope.setdefault("state", {})["token_id"] = token_id(candidate)  # request.state.token_id
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ValueError("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the app sees an empty body
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read above, once, then the client's own messages (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _problem(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(key.encode(), value.encode()) for key, value in headers.items()]
    # The body was not read: close the connection rather than parse what the client still sends.
    raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
