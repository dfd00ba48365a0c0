"""The HTTP contract of the routing endpoint (request and response bodies, shown at /docs).

Ticket fields mirror the archive's ticket columns; over-long text is truncated by the
``TextBuilder`` like everywhere else, so only a missing or empty title, a wrong type or an
absurdly long identifier is a client error (422 naming the field).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pipelines.data.feedback import MAX_SOURCE_CHARS, MAX_TENANT_CHARS, MAX_TICKET_ID_CHARS

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
TicketId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TICKET_ID_CHARS)
]


class TicketIn(BaseModel):
    """A ticket to route. Unknown fields are ignored, so callers can send whole ticket rows."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "ticket_id": "INC-1042",
                    "title": "payment-gateway 5xx spike in eu-west-1",
                    "description": "p99 latency above 2s since 02:10, checkout failing for some users",
                    "service": "payment-gateway",
                    "region": "eu-west-1",
                    "severity": "sev2",
                }
            ]
        },
    )

    ticket_id: TicketId | None = Field(default=None, description="Echoed back; generated when absent.")
    title: NonEmpty
    description: str | None = None
    service: str | None = None
    cluster: str | None = None
    region: str | None = None
    source: str | None = None
    severity: str | None = None


class TenantScore(BaseModel):
    tenant: str
    score: float


class ModelRef(BaseModel):
    name: str
    version: str


class RouteResult(BaseModel):
    ticket_id: str
    tenant: str
    confidence: float
    top_k: list[TenantScore]
    abstain: bool = Field(description="Below the version's threshold: send to the human triage queue.")
    model: ModelRef


class BatchIn(BaseModel):
    tickets: list[TicketIn] = Field(min_length=1)


class BatchResult(BaseModel):
    results: list[RouteResult] = Field(description="In the order of the request's tickets.")


class FeedbackIn(BaseModel):
    ticket_id: TicketId
    tenant: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TENANT_CHARS)
    ]
    source: Annotated[str, StringConstraints(max_length=MAX_SOURCE_CHARS)] | None = None


class FeedbackAck(BaseModel):
    ticket_id: str
    tenant: str
    stored: bool = Field(description="True once the answer is committed to the feedback database.")
    received_at: str


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    tenants: int
    trained_window: str
    abstain_threshold: float
    loaded_at: str


class Problem(BaseModel):
    detail: str
