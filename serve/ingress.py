"""The HTTP ingress (FastAPI): contract, auth, feedback; scoring is delegated to the model
replicas through a ``DeploymentHandle``, so the two scale separately (e.g. CPU ingress, GPU model).
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, Security, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipelines.config import OncallConfig
from pipelines.contract.text import repair_text
from pipelines.data.feedback import FeedbackStore
from serve.contract import (
    BatchIn,
    BatchResult,
    FeedbackAck,
    FeedbackIn,
    ModelInfo,
    Problem,
    RouteResult,
    TicketIn,
    ValidationProblem,
)
from serve.gate import Gate, GateSettings, configure
from serve.metrics import count_requests
from serve.router_model import ModelNotReadyError

log = logging.getLogger(__name__)

NOT_READY_RETRY_AFTER_S = 5
BUSY_RETRY_AFTER_S = 1
# A replica lost with its node: tries of one model call, and the pause before the next one (× try).
REPLICA_LOST_ATTEMPTS = 3
REPLICA_LOST_BACKOFF_S = 0.2
READY_CACHE_S = 5.0  # a "ready" answer is reused this long: probes do not each call a replica
ROUTES = ("/v1/route", "/v1/route/batch", "/v1/feedback", "/v1/model", "/healthz", "/readyz")

app = FastAPI(
    title="oncall-router",
    description="Routes an oncall ticket to the tenant (team) that owns it. "
    "`abstain: true` means the model is not sure enough: send the ticket to human triage.",
    version="1",
)
# Auth is enforced by serve.gate before the body is read; this only documents the scheme.
bearer = HTTPBearer(auto_error=False, description="One of serve.auth_tokens, when any are configured.")
PROTECTED = [Security(bearer)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A Content-Length that is not a number."},
    401: {"model": Problem, "description": "Missing bearer token (auth is on); checked before the body."},
    403: {"model": Problem, "description": "Unknown bearer token."},
    413: {"model": Problem, "description": "Body over serve.max_body_bytes (or too many tickets)."},
    422: {"model": ValidationProblem, "description": "A field breaks the contract; `detail[].loc` names it."},
    503: {"model": Problem, "description": "No model version loaded yet, or too many requests queued."},
    504: {"model": Problem, "description": "Not answered within serve.request_timeout_s."},
}

_max_tickets: int | None = None  # serve.max_tickets_per_request, set by the ingress replica


def publish_batch_limit(max_tickets: int) -> None:
    global _max_tickets
    _max_tickets = max_tickets


def _openapi() -> dict[str, Any]:
    """The OpenAPI document, stating serve.max_tickets_per_request as a batch's ``maxItems``: a
    batch the document allows is never refused for its length (more tickets: 413).

    Set as ``app.openapi`` before ``serve.ingress`` freezes a copy of the app: the copy calls
    this module's function, whose state the replica's constructor sets (as for ``serve.gate``)."""
    document = FastAPI.openapi(app)
    if _max_tickets is not None:
        document["components"]["schemas"]["BatchIn"]["properties"]["tickets"]["maxItems"] = _max_tickets
    return document


app.openapi = _openapi  # type: ignore[method-assign]
app.add_middleware(Gate)  # inside the metrics middleware below, so its 401/413s are counted
app.middleware("http")(count_requests(ROUTES))


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field, without echoing its value: a value may be huge, or hold a lone
    surrogate that no UTF-8 answer can carry (the default handler then fails with a 500)."""
    errors = [
        {"loc": list(e["loc"]), "msg": repair_text(str(e["msg"])), "type": e["type"]} for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _unknown_tenant() -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [
            {
                "loc": ["body", "tenant"],
                "msg": "not a tenant of the serving model (feedback.new_tenants: reject)",
                "type": "unknown_tenant",
            }
        ],
    )


def _new_ticket_id() -> str:
    return f"anon-{uuid.uuid4().hex}"


def _unscorable(results: list[dict[str, Any]], where: Callable[[int], list[str | int]]) -> None:
    """A 422 naming each ticket the model failed on (its neighbours in the batch were answered)."""
    failed = [i for i, result in enumerate(results) if "error" in result]
    if failed:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": where(i), "msg": results[i]["error"], "type": "unscorable"} for i in failed],
        )


async def _awaited(pending: Any) -> Any:
    return await pending


def _unavailable(detail: str, retry_after_s: int) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(retry_after_s)}
    )


# Everything the class uses must be defined above it: serve.ingress pickles it right here.
@serve.ingress(app)
class RouterIngress:
    def __init__(self, model: DeploymentHandle, config: OncallConfig) -> None:
        settings = config.serve
        configure(GateSettings.of(settings.tokens(), settings.max_body_bytes))
        publish_batch_limit(settings.max_tickets_per_request)
        self._model = model
        self._max_tickets = settings.max_tickets_per_request
        self._reject_new_tenants = config.feedback.new_tenants == "reject"
        self._timeout_s = settings.request_timeout_s
        self._feedback_timeout_s = settings.feedback_timeout_s
        self._feedback_url = config.feedback_db_url
        self._feedback: FeedbackStore | None = None  # opened on first use: routing never waits on it
        self._feedback_lock = asyncio.Lock()
        self._ready_until = 0.0

    @app.post("/v1/route", response_model=RouteResult, responses=ERRORS, dependencies=PROTECTED)
    async def route(self, ticket: TicketIn) -> dict[str, Any]:
        result = await self._score(lambda: self._model.route.remote(ticket.model_dump()))
        _unscorable([result], lambda _: ["body"])
        return {"ticket_id": ticket.ticket_id or _new_ticket_id(), **result}

    @app.post("/v1/route/batch", response_model=BatchResult, responses=ERRORS, dependencies=PROTECTED)
    async def route_batch(self, batch: BatchIn) -> dict[str, Any]:
        if len(batch.tickets) > self._max_tickets:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"tickets: {len(batch.tickets)} tickets in one request, at most {self._max_tickets} "
                "(serve.max_tickets_per_request)",
            )
        results = await self._score(
            lambda: self._model.route_many.remote([t.model_dump() for t in batch.tickets])
        )
        _unscorable(results, lambda i: ["body", "tickets", i])
        return {
            "results": [
                {"ticket_id": ticket.ticket_id or _new_ticket_id(), **result}
                for ticket, result in zip(batch.tickets, results, strict=True)
            ]
        }

    @app.post("/v1/feedback", response_model=FeedbackAck, responses=ERRORS, dependencies=PROTECTED)
    async def feedback(self, answer: FeedbackIn, request: Request) -> dict[str, Any]:
        """Store a ticket's owner. With ``feedback.new_tenants: reject`` a tenant the serving model
        does not know is a 422 here, where the sender can still correct it (the nightly would never
        train on it); with hold or accept the nightly decides."""
        if self._reject_new_tenants and not await self._score(
            lambda: self._model.knows.remote(answer.tenant)
        ):
            raise _unknown_tenant()
        store = await self._feedback_store()
        sender = getattr(request.state, "token_id", None)  # set by serve.gate when auth is on
        stored = await self._within(
            asyncio.to_thread(store.record, answer.ticket_id, answer.tenant, answer.source, token_id=sender),
            self._feedback_timeout_s,
            "the feedback database",
        )
        return {
            "ticket_id": stored.ticket_id,
            "tenant": stored.tenant,
            "stored": True,
            "received_at": stored.received_at.isoformat(),
        }

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS, dependencies=PROTECTED)
    async def model(self) -> dict[str, Any]:
        return await self._score(lambda: self._model.info.remote())

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """The process is up (no model needed, no replica called)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Problem}})
    async def readyz(self, response: Response) -> dict[str, str]:
        """200 once a model version is loaded, 503 before. A "ready" is reused for a few seconds,
        so frequent probes do not each call a model replica."""
        if time.monotonic() < self._ready_until:
            return {"status": "ready"}
        try:
            ready = await asyncio.wait_for(self._model.ready.remote(), self._timeout_s)
        except (TimeoutError, BackPressureError, RayActorError, ActorUnavailableError):
            ready = False
        if ready:
            self._ready_until = time.monotonic() + READY_CACHE_S
            return {"status": "ready"}
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "no model loaded"}

    async def _feedback_store(self) -> FeedbackStore:
        """Open the feedback database on first use; while it is down, feedback answers 503 and
        the next request tries again."""
        async with self._feedback_lock:
            if self._feedback is None:
                opening = asyncio.to_thread(FeedbackStore, self._feedback_url)
                self._feedback = await self._within(
                    opening, self._feedback_timeout_s, "the feedback database"
                )
            return self._feedback

    async def _within(self, pending: Any, timeout_s: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(pending, timeout_s)
        except TimeoutError:
            log.warning("%s did not answer within %.1f s", what, timeout_s)
            detail = f"{what} did not answer in time"
        except Exception as exc:  # any failure of a dependency is a 503 here
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
            detail = f"{what} is unavailable"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{detail}; retry shortly", headers={"Retry-After": "5"}
        )

    async def _score(self, call: Callable[[], Any]) -> Any:
        """Await a model call within serve.request_timeout_s (504 after it). Scoring is idempotent,
        so a call whose replica was lost (its node died) is sent again, and Serve routes it to a
        live replica; a full queue is 503 with Retry-After."""
        for attempt in range(1, REPLICA_LOST_ATTEMPTS + 1):
            pending = call()
            try:
                return await asyncio.wait_for(_awaited(pending), self._timeout_s)
            except ModelNotReadyError as exc:
                raise _unavailable(
                    str(exc.args[0]) if exc.args else "no model loaded yet", NOT_READY_RETRY_AFTER_S
                ) from None
            except BackPressureError:
                raise _unavailable("too many requests queued; retry shortly", BUSY_RETRY_AFTER_S) from None
            except TimeoutError:
                pending.cancel()
                raise HTTPException(
                    status.HTTP_504_GATEWAY_TIMEOUT,
                    f"not answered within {self._timeout_s:g} s (serve.request_timeout_s)",
                ) from None
            except (RayActorError, ActorUnavailableError) as exc:
                log.warning("model replica lost (attempt %d of %d): %s", attempt, REPLICA_LOST_ATTEMPTS, exc)
                await asyncio.sleep(REPLICA_LOST_BACKOFF_S * attempt)
        raise _unavailable("model replicas were lost; retry shortly", 1)
