"""The text repair rule: any JSON string becomes text the tokenizer and the model accept, so one
hostile ticket cannot fail the batch it is scored in."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.contract.text import REPLACEMENT, TextBuilder, repair_text
from pipelines.predict import TicketClassifier

FIXTURE_CLASSIFIER = (
    Path(__file__).parents[2] / "fixtures" / "pre_layout_version" / "model" / "artifacts" / "classifier"
)
HOSTILE = [
    {"title": "ok", "description": "\ud800"},  # a lone surrogate: not encodable as UTF-8
    {"title": "\u001c"},  # a control character only: no text at all
    {"title": "\x00\x7f\x85\x9f"},
    {"title": "\udfff trailing", "service": "a\u0000b"},
]


@pytest.mark.parametrize(
    ("raw", "repaired"),
    [
        ("\ud800", REPLACEMENT),
        ("disk \udc00 full", f"disk {REPLACEMENT} full"),
        ("\u001c", ""),
        ("a\x00b\x7fc\x85d\x9fe", "a b c d e"),
        ("line\tone\r\nline two", "line one line two"),
        ("cafe\u0301", "caf\u00e9"),  # NFC
        ("\U0001f525 fire", "\U0001f525 fire"),  # a real astral character is kept
    ],
)
def test_repair_text(raw: str, repaired: str) -> None:
    assert repair_text(raw) == repaired
    repaired.encode("utf-8")  # never raises


def test_the_builder_repairs_every_field() -> None:
    builder = TextBuilder(("service", "title", "description"), 160, 600)
    assert (
        builder.build({"title": "ok", "description": "\ud800"}) == f"title: ok | description: {REPLACEMENT}"
    )
    assert builder.build({"title": "\u001c"}) == ""


@pytest.fixture(scope="module")
def classifier() -> TicketClassifier:
    return TicketClassifier.from_dir(FIXTURE_CLASSIFIER, device="cpu", batch_size=4)


def test_hostile_and_empty_tickets_are_scored_next_to_normal_ones(classifier: TicketClassifier) -> None:
    normal = [{"title": "checkout api is down", "service": "checkout-api"}] * 3
    alone = classifier.predict(normal[:1])[0]
    predictions = classifier.predict([*HOSTILE, *normal, {"title": ""}])
    assert len(predictions) == len(HOSTILE) + 4
    for prediction in predictions[len(HOSTILE) : -1]:  # the neighbours' answers do not change
        assert prediction.tenant == alone.tenant
        assert prediction.confidence == pytest.approx(alone.confidence, abs=1e-5)
    assert classifier.predict([{"title": "\u001c"}])[0].tenant in classifier.labels.tenants
