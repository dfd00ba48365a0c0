"""The OpenAPI document states what the endpoint enforces: its patterns accept exactly what
pydantic accepts, its batch cap is the configured one, every error is declared."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import jsonschema_rs
import pytest
from pydantic import TypeAdapter, ValidationError

from pipelines.config import ServeConfig
from pipelines.contract.text import repair_text
from serve import ingress
from serve.app import serve_timeout_s
from serve.contract import CONTROL, HAS_TEXT, SPACE, Source, Tenant, TicketId, Title

SAMPLES = [
    "INC-1",
    " INC-1 ",
    "",
    " ",
    "\u3000",
    "\u00a0x",
    "\ufeff",  # a BOM: not whitespace to Python (nor to Rust), whitespace to ECMA's \s
    "a\tb",
    "a\n",
    "x\u0085",
    "\u001c\u0000 \u007f",
    "payment-gateway 在集群 sg1",
    "😀",
]


def _accepts(annotation: object, value: str) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "annotation", [Title, TicketId, Tenant, Source], ids=["title", "ticket_id", "tenant", "source"]
)
def test_the_published_schema_accepts_exactly_what_is_enforced(annotation: object) -> None:
    """The schema read by a JSON Schema validator (the one schemathesis checks with) and by
    Python's regexes (the ones its generator reads patterns with) against pydantic."""
    schema = TypeAdapter(annotation).json_schema()
    published = jsonschema_rs.validator_for(schema)
    for value in SAMPLES:
        assert _accepts(annotation, value) == published.is_valid(value) == _python_reads(schema, value), repr(
            value
        )


def _python_reads(schema: dict, value: str) -> bool:
    return (
        len(value) <= schema["maxLength"]
        and bool(re.search(schema.get("pattern", ""), value))
        and not re.search(schema.get("not", {}).get("pattern", "(?!)"), value)
    )


def test_the_title_pattern_is_the_repair_rule() -> None:
    """A title has text once repaired exactly when the pattern finds a character."""
    for value in [*SAMPLES, *map(chr, range(0x3001))]:
        assert bool(repair_text(value)) == bool(re.search(HAS_TEXT, value)), repr(value)


def _whitespace() -> Iterator[str]:
    return (chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace())


def test_every_character_python_strips_is_a_control_or_a_space() -> None:
    classes = re.compile(f"[{CONTROL}{SPACE}]")
    assert all(classes.match(char) for char in _whitespace())


def test_serve_gives_up_after_the_ingress() -> None:
    """Serve's own timeout (a bare 408) must not beat the ingress's declared 504 and 503."""
    settings = ServeConfig(request_timeout_s=2, feedback_timeout_s=10)
    assert serve_timeout_s(settings) > 10 and serve_timeout_s(ServeConfig()) > ServeConfig().request_timeout_s


def test_the_document_states_the_batch_cap_and_declares_every_error() -> None:
    ingress.publish_batch_limit(7)
    document = ingress.app.openapi()
    assert document["components"]["schemas"]["BatchIn"]["properties"]["tickets"]["maxItems"] == 7
    for path in ("/v1/route", "/v1/route/batch", "/v1/feedback"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "403", "413", "422", "503", "504"} <= set(responses)
        problem = responses["422"]["content"]["application/json"]["schema"]["$ref"]
        assert problem.endswith("/ValidationProblem")
