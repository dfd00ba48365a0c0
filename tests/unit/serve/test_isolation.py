"""A ticket the model fails on is answered alone with an error; its batch neighbours get their
answers (no Ray: the replica's scoring step on a stand-in classifier)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest

from pipelines.predict import Prediction
from serve.router_model import LoadBackoff, TicketRouterModel


class PoisonedClassifier:
    """Fails any batch holding a ticket titled 'poison', like a tokenizer error would."""

    def predict(self, tickets: Sequence[Mapping[str, Any]], top_k: int = 3) -> list[Prediction]:
        if any(ticket["title"] == "poison" for ticket in tickets):
            raise RuntimeError("tokenizer exploded")
        return [
            Prediction(str(ticket["title"]), 0.9, [(str(ticket["title"]), 0.9)], False) for ticket in tickets
        ]


@pytest.fixture
def replica() -> TicketRouterModel:
    model = object.__new__(TicketRouterModel)  # only the scoring step: no registry, no watcher
    model._settings = SimpleNamespace(top_k=3)
    model._metrics = SimpleNamespace(unscorable=Mock())
    model._stop = threading.Event()  # what __del__ sets
    return model


def test_one_bad_ticket_fails_alone(replica: TicketRouterModel) -> None:
    tickets = [{"title": "a"}, {"title": "poison"}, {"title": "b"}]
    answers = replica._predict_isolated(PoisonedClassifier(), tickets)
    assert [a.tenant if a else None for a in answers] == ["a", None, "b"]
    assert replica._metrics.unscorable.inc.call_count == 1
    assert replica._predict_isolated(PoisonedClassifier(), [{"title": "poison"}]) == [None]


def test_a_version_that_failed_to_load_is_retried_after_a_growing_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("serve.router_model.time.monotonic", lambda: now[0])
    backoff = LoadBackoff(first_s=10, max_s=25)
    backoff.failed("7", OSError("no such artifact\nmore"))
    assert backoff.error == "version 7: OSError: no such artifact"
    assert backoff.waiting("7") and not backoff.waiting("8")
    now[0] = 111.0
    assert not backoff.waiting("7")
    backoff.failed("7", OSError("again"))  # second failure: 20 s
    now[0] = 130.0
    assert backoff.waiting("7")
    backoff.failed("7", OSError("again"))
    now[0] = 130.0 + 26  # capped at 25 s
    assert not backoff.waiting("7")
    backoff.succeeded()
    assert backoff.error is None and not backoff.waiting("7")
