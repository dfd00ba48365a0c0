"""The HTTP contract of the routing endpoint (request and response bodies, shown at /docs).

Ticket fields mirror the archive's ticket columns. Text is repaired by the ``TextBuilder``
(lone surrogates, control characters) and over-long text is truncated like everywhere else; a
client error (422 naming the field) is a missing title or one with no text once repaired, a wrong
type, a field over its cap, or an identifier with characters no database or JSON answer takes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from pipelines.contract.text import is_clean, repair_text
from pipelines.data.feedback import MAX_SOURCE_CHARS, MAX_TENANT_CHARS, MAX_TICKET_ID_CHARS

MAX_DESCRIPTION_CHARS = 65_536  # far above what the model reads (data.max_description_chars)
MAX_FIELD_CHARS = 4_096
MAX_TICKETS_SCHEMA = 100_000  # a backstop; serve.max_tickets_per_request (413) is the real cap


def _has_text(value: str) -> str:
    if not repair_text(value):
        raise ValueError("has no text (only whitespace or control characters)")
    return value


def _printable(value: str) -> str:
    """Identifiers are stored and echoed: a lone surrogate or a control character is refused."""
    if not is_clean(value) or any(ch in value for ch in "\t\r\n"):
        raise ValueError("has a control character or a lone UTF-16 surrogate")
    return value


ShortText = Annotated[str, StringConstraints(max_length=MAX_FIELD_CHARS)]
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_FIELD_CHARS),
    AfterValidator(_has_text),
]
TicketId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TICKET_ID_CHARS),
    AfterValidator(_printable),
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
    title: Title
    description: Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    service: ShortText | None = None
    cluster: ShortText | None = None
    region: ShortText | None = None
    source: ShortText | None = None
    severity: ShortText | None = None


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
    tickets: list[TicketIn] = Field(min_length=1, max_length=MAX_TICKETS_SCHEMA)


class BatchResult(BaseModel):
    results: list[RouteResult] = Field(description="In the order of the request's tickets.")


class FeedbackIn(BaseModel):
    ticket_id: TicketId
    tenant: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TENANT_CHARS),
        AfterValidator(_printable),
    ]
    source: (
        Annotated[str, StringConstraints(max_length=MAX_SOURCE_CHARS), AfterValidator(_printable)] | None
    ) = None


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
    load_error: str | None = Field(
        default=None, description="Why the alias's newest version did not load (the one above still serves)."
    )


class Problem(BaseModel):
    detail: str
