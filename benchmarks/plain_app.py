"""The baseline: what a user would otherwise write — the same ``TicketClassifier`` behind a
plain FastAPI app served by uvicorn, each request scored on its own (no batching).

Run: ``uvicorn --factory benchmarks.plain_app:create_app`` with the usual ``ONCALL_*``
configuration in the environment (the benchmark sets ``ONCALL_DATA_DIR``).
"""

from __future__ import annotations

from fastapi import FastAPI

from pipelines.config import load_config
from pipelines.registry.versions import Registry
from serve.contract import ModelRef, RouteResult, TenantScore, TicketIn


def create_app() -> FastAPI:
    config = load_config()
    classifier = Registry(config).load_classifier(alias=config.serve.alias)
    model = ModelRef(name=config.registry.model_name, version=classifier.version or "")
    app = FastAPI(title="plain FastAPI baseline")

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/route")
    def route(ticket: TicketIn) -> RouteResult:
        # A sync endpoint: FastAPI runs it in its thread pool, one request per forward pass.
        prediction = classifier.predict([ticket.model_dump()], top_k=config.serve.top_k)[0]
        return RouteResult(
            ticket_id=ticket.ticket_id or "",
            tenant=prediction.tenant,
            confidence=prediction.confidence,
            top_k=[TenantScore(tenant=t, score=s) for t, s in prediction.top_k],
            abstain=prediction.abstain,
            model=model,
        )

    return app
