"""The HTTP ingress (FastAPI): contract, auth, feedback; scoring is delegated to the model
replicas through a ``DeploymentHandle``, so the two scale separately (e.g. CPU ingress, GPU model).
"""

import asyncio
import hmac
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.config import OncallConfig
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
)
from serve.metrics import count_requests
from serve.router_model import ModelNotReadyError

NOT_READY_RETRY_AFTER_S = 5
ROUTES = ("/v1/route", "/v1/route/batch", "/v1/feedback", "/v1/model", "/healthz", "/readyz")

app = FastAPI(
    title="oncall-router",
    description="Routes an oncall ticket to the tenant (team) that owns it. "
    "`abstain: true` means the model is not sure enough: send the ticket to human triage.",
    version="1",
)
bearer = HTTPBearer(auto_error=False, description="One of serve.auth_tokens, when any are configured.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing bearer token (auth is on)."},
    403: {"model": Problem, "description": "Unknown bearer token."},
    503: {"model": Problem, "description": "No model version loaded yet."},
}


app.middleware("http")(count_requests(ROUTES))


def _new_ticket_id() -> str:
    return f"anon-{uuid.uuid4().hex}"


# Everything the class uses must be defined above it: serve.ingress pickles it right here.
@serve.ingress(app)
class RouterIngress:
    def __init__(self, model: DeploymentHandle, config: OncallConfig) -> None:
        self._model = model
        self._tokens = [token.encode() for token in config.serve.auth_tokens]
        self._max_tickets = config.serve.max_tickets_per_request
        self._feedback = FeedbackStore(config.feedback_db_url)

    @app.post("/v1/route", response_model=RouteResult, responses=ERRORS)
    async def route(self, ticket: TicketIn, credentials: Credentials) -> dict[str, Any]:
        self._authorize(credentials)
        result = await self._score(self._model.route.remote(ticket.model_dump()))
        return {"ticket_id": ticket.ticket_id or _new_ticket_id(), **result}

    @app.post(
        "/v1/route/batch",
        response_model=BatchResult,
        responses={**ERRORS, 413: {"model": Problem, "description": "Too many tickets in one request."}},
    )
    async def route_batch(self, batch: BatchIn, credentials: Credentials) -> dict[str, Any]:
        self._authorize(credentials)
        if len(batch.tickets) > self._max_tickets:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"tickets: {len(batch.tickets)} tickets in one request, at most {self._max_tickets} "
                "(serve.max_tickets_per_request)",
            )
        results = await self._score(self._model.route_many.remote([t.model_dump() for t in batch.tickets]))
        return {
            "results": [
                {"ticket_id": ticket.ticket_id or _new_ticket_id(), **result}
                for ticket, result in zip(batch.tickets, results, strict=True)
            ]
        }

    @app.post("/v1/feedback", response_model=FeedbackAck, responses=ERRORS)
    async def feedback(self, answer: FeedbackIn, credentials: Credentials) -> dict[str, Any]:
        self._authorize(credentials)
        stored = await asyncio.to_thread(
            self._feedback.record, answer.ticket_id, answer.tenant, answer.source
        )
        return {
            "ticket_id": stored.ticket_id,
            "tenant": stored.tenant,
            "stored": True,
            "received_at": stored.received_at.isoformat(),
        }

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS)
    async def model(self, credentials: Credentials) -> dict[str, Any]:
        self._authorize(credentials)
        return await self._score(self._model.info.remote())

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """The process is up (no model needed)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Problem}})
    async def readyz(self, response: Response) -> dict[str, str]:
        """200 once a model version is loaded, 503 before."""
        if await self._model.ready.remote():
            return {"status": "ready"}
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "no model loaded"}

    async def _score(self, pending: Any) -> Any:
        try:
            return await pending
        except ModelNotReadyError as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                str(exc.args[0]) if exc.args else "no model loaded yet",
                headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)},
            ) from None

    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if not self._tokens:
            return
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing 'Authorization: Bearer <token>' header",
                headers={"WWW-Authenticate": "Bearer"},
            )
        offered = credentials.credentials.encode()
        # Compare against every token (constant time each) so timing reveals nothing.
        if not any([hmac.compare_digest(offered, token) for token in self._tokens]):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the bearer token is not accepted")
