"""The HTTP contract of the routing endpoint (request and response bodies, shown at /docs).

Ticket fields mirror the archive's ticket columns. Text is repaired by the ``TextBuilder``
(lone surrogates, control characters) and over-long text is truncated like everywhere else; a
client error (422 naming the field) is a missing title or one with no text once repaired, a wrong
type, a field over its cap, or an identifier with characters no database or JSON answer takes.

Every rule is a JSON Schema keyword (``maxLength``, ``pattern``, ``not``) enforced as published,
so the OpenAPI document says exactly which bodies are accepted: a client (or a schema-driven
test) that follows it never gets a 422 for a value the document allows.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from pipelines.data.feedback import MAX_SOURCE_CHARS, MAX_TENANT_CHARS, MAX_TICKET_ID_CHARS

MAX_DESCRIPTION_CHARS = 65_536  # far above what the model reads (data.max_description_chars)
MAX_FIELD_CHARS = 4_096
MAX_TICKETS_SCHEMA = 100_000  # a backstop; serve.max_tickets_per_request (413) is the real cap

# Character classes, as \u escapes that ECMA-262 (the document's readers), Rust (pydantic's
# validator) and Python regexes read alike. CONTROL: C0 and C1 controls and DEL (``repair_text``
# drops them); SPACE: the other characters ``str.strip`` and ``repair_text`` treat as whitespace.
# The patterns are unanchored searches on purpose: ``$`` differs between engines (Python's also
# matches before a final newline).
CONTROL = r"\u0000-\u001f\u007f-\u009f"
SPACE = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
HAS_TEXT = f"[^{CONTROL}{SPACE}]"  # some text once repaired: neither a control nor whitespace
A_CONTROL = f"[{CONTROL}]"
_A_CONTROL = re.compile(A_CONTROL)


def _no_control(value: str) -> str:
    if _A_CONTROL.search(value):
        raise ValueError("has a control character")
    return value


# Identifiers are stored and echoed: no control character (published as ``not: {pattern}``) and
# some text; checked as sent (so the published maxLength is the real cap), then stripped.
_NO_CONTROL = (AfterValidator(_no_control), Field(json_schema_extra={"not": {"pattern": A_CONTROL}}))
ShortText = Annotated[str, StringConstraints(max_length=MAX_FIELD_CHARS)]
Title = Annotated[
    str, StringConstraints(max_length=MAX_FIELD_CHARS, pattern=HAS_TEXT), AfterValidator(str.strip)
]
TicketId = Annotated[
    str,
    StringConstraints(max_length=MAX_TICKET_ID_CHARS, pattern=HAS_TEXT),
    *_NO_CONTROL,
    AfterValidator(str.strip),
]
Tenant = Annotated[
    str,
    StringConstraints(max_length=MAX_TENANT_CHARS, pattern=HAS_TEXT),
    *_NO_CONTROL,
    AfterValidator(str.strip),
]
Source = Annotated[str, StringConstraints(max_length=MAX_SOURCE_CHARS), *_NO_CONTROL]


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
    tenant: Tenant
    source: Source | None = None


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


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description='Where the problem is, e.g. ["body", "tickets", 3, "title"].')
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422: each field that breaks the contract, named without echoing its value."""

    detail: list[FieldProblem]
