"""Behaviour of the test session's trained version (``trained_run``), in the spirit of
Made-With-ML's ``tests/model``: invariance (what must not change the answer), directional (a
ticket naming a service goes to its owner) and minimum functionality (a bare title is answered).

Owners and volumes come from the generated archive and its manifest, so every expectation is
the archive's ground truth, not a snapshot of this model's answers.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.config import OncallConfig
from pipelines.contract.archive import partition_dir
from pipelines.data.ownership import MIN_NEW_OWNER_DAYS
from pipelines.predict import TicketClassifier
from pipelines.registry.versions import Registry
from pipelines.training.job import TrainResult

Ticket = dict[str, Any]
# A service is "known" with this many labelled tickets in the training days (22 of 94 services
# in the small archive); "well known": the busiest ones.
MIN_SEEN_TICKETS = 20
WELL_KNOWN = 10
# Measured on the trained version: 44/44 directional tickets and 20/20 title-only tickets right;
# the best constant answer gets 18% and 40% of them, a model with shuffled labels none.
DIRECTIONAL_ACCURACY = 0.9
TITLE_ONLY_ACCURACY = 0.8
NUMBERS_INVARIANCE = 0.9  # measured: 95% of test-day tickets keep their tenant


def archive_rows(archive: Path, days: Sequence[dt.date]) -> pd.DataFrame:
    return pd.concat([pq.read_table(partition_dir(str(archive), day)).to_pandas() for day in days])


@pytest.fixture(scope="module")
def classifier(trained_run: tuple[OncallConfig, TrainResult]) -> TicketClassifier:
    config, result = trained_run
    return Registry(config).load_classifier(version=result.version)


@pytest.fixture(scope="module")
def owners(small_archive: tuple[Path, dict], trained_run: tuple[OncallConfig, TrainResult]) -> dict[str, str]:
    """Each service's owner as the version can know it: moves dated early enough in its training
    days for the new owner to hold ``MIN_NEW_OWNER_DAYS`` days applied, later ones not."""
    manifest = small_archive[1]
    learnable_by = trained_run[1].split.train[-1] - dt.timedelta(days=MIN_NEW_OWNER_DAYS - 1)
    owner = {service: t["tenant"] for t in manifest["tenants"] for service in t["services"]}
    for move in manifest["ownership_moves"]:
        if dt.date.fromisoformat(move["date"]) <= learnable_by:
            owner[move["service"]] = move["to"]
    return owner


@pytest.fixture(scope="module")
def seen_services(
    small_archive: tuple[Path, dict], trained_run: tuple[OncallConfig, TrainResult]
) -> list[str]:
    """Services with at least ``MIN_SEEN_TICKETS`` labelled tickets in the training days, busiest
    first."""
    rows = archive_rows(small_archive[0], trained_run[1].split.train)
    counts = rows.dropna(subset=["service", "tenant"])["service"].value_counts()
    return [service for service, n in counts.items() if n >= MIN_SEEN_TICKETS]


@pytest.fixture(scope="module")
def held_out_tickets(
    small_archive: tuple[Path, dict], trained_run: tuple[OncallConfig, TrainResult]
) -> list[Ticket]:
    """200 tickets of the held-out test days, null fields left out."""
    rows = archive_rows(small_archive[0], trained_run[1].split.test).head(200)
    return [{k: v for k, v in row.items() if isinstance(v, str)} for row in rows.to_dict("records")]


def spread_whitespace(ticket: Ticket) -> Ticket:
    def spread(text: str) -> str:
        return "\n\t " + text.replace(" ", "  \t ") + "  \n"

    return {k: spread(v) if k in ("title", "description") else v for k, v in ticket.items()}


def reverse_keys(ticket: Ticket) -> Ticket:
    return dict(reversed(ticket.items()))


def add_unknown_field(ticket: Ticket) -> Ticket:
    return {**ticket, "customer_tier": "gold", "runbook": "https://wiki.example/runbooks/42"}


def distributions(classifier: TicketClassifier, tickets: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Every tenant's probability per ticket, columns in label order, through ``predict``."""
    index = classifier.labels.id_of()
    out = np.zeros((len(tickets), len(classifier.labels)))
    for row, prediction in enumerate(classifier.predict(tickets, top_k=len(classifier.labels))):
        for tenant, score in prediction.top_k:
            out[row, index[tenant]] = score
    return out


@pytest.mark.parametrize("perturb", [spread_whitespace, reverse_keys, add_unknown_field])
def test_invariance_to_whitespace_key_order_and_unknown_fields(
    classifier: TicketClassifier, held_out_tickets: list[Ticket], perturb: Callable[[Ticket], Ticket]
) -> None:
    before = distributions(classifier, held_out_tickets)
    after = distributions(classifier, [perturb(ticket) for ticket in held_out_tickets])
    moved = int((after.argmax(axis=1) != before.argmax(axis=1)).sum())
    assert moved == 0, f"{moved} of {len(held_out_tickets)} tickets changed tenant"
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


def test_invariance_to_numbers_in_the_text(
    classifier: TicketClassifier, held_out_tickets: list[Ticket]
) -> None:
    """Hosts, counts, percentages and latencies are noise: new digits keep most tickets' tenant."""
    rng = random.Random(0)

    def new_digits(text: str) -> str:
        return re.sub(r"\d", lambda _: str(rng.randint(0, 9)), text)

    changed = [
        {k: new_digits(v) if k in ("title", "description") else v for k, v in ticket.items()}
        for ticket in held_out_tickets
    ]
    kept = [
        a.tenant == b.tenant
        for a, b in zip(classifier.predict(held_out_tickets), classifier.predict(changed), strict=True)
    ]
    assert sum(kept) >= NUMBERS_INVARIANCE * len(kept), (
        f"{len(kept) - sum(kept)} of {len(kept)} changed tenant"
    )


def assert_routes_to_owners(
    classifier: TicketClassifier,
    services: list[str],
    phrasings: tuple[str, ...],
    owners: dict[str, str],
    *,
    accuracy: float,
    service_field: bool,
) -> None:
    """Tickets whose title names a service (each phrasing × each service; with the ``service``
    field too when ``service_field``): at least ``accuracy`` of them go to the service's owner,
    a share no constant answer reaches on them (so a model that ignores the service fails)."""
    named = [(service, phrase.format(service)) for phrase in phrasings for service in services]
    tickets = [{"title": title, **({"service": s} if service_field else {})} for s, title in named]
    expected = [owners[service] for service, _ in named]
    assert Counter(expected).most_common(1)[0][1] < accuracy * len(expected), (
        "the services hardly differ in owner"
    )
    misses = [
        f"{title!r} → {p.tenant} ({p.confidence:.2f}), owner {owner}"
        for (_, title), owner, p in zip(named, expected, classifier.predict(tickets), strict=True)
        if p.tenant != owner
    ]
    assert len(misses) <= (1 - accuracy) * len(tickets), (
        f"{len(misses)} of {len(tickets)} misrouted: {misses}"
    )


def test_a_ticket_naming_a_service_routes_to_its_owner(
    classifier: TicketClassifier, seen_services: list[str], owners: dict[str, str]
) -> None:
    assert len(seen_services) >= 15  # enough services for the share to mean something
    phrasings = ("{} error rate above 5%", "Elevated 5xx errors from {}")
    assert_routes_to_owners(
        classifier, seen_services, phrasings, owners, accuracy=DIRECTIONAL_ACCURACY, service_field=True
    )


def test_a_title_naming_a_well_known_service_routes_to_its_owner(
    classifier: TicketClassifier, seen_services: list[str], owners: dict[str, str]
) -> None:
    phrasings = ("{} is down", "{} keeps restarting")
    assert_routes_to_owners(
        classifier,
        seen_services[:WELL_KNOWN],
        phrasings,
        owners,
        accuracy=TITLE_ONLY_ACCURACY,
        service_field=False,
    )


@pytest.mark.parametrize("title", ["disk full", "something is wrong with the payments page, please help"])
def test_a_title_only_ticket_is_answered(classifier: TicketClassifier, title: str) -> None:
    (prediction,) = classifier.predict([{"title": title}], top_k=3)
    assert prediction.tenant in classifier.labels.tenants
    assert 0 < prediction.confidence <= 1
    assert prediction.top_k[0] == (prediction.tenant, prediction.confidence)
    scores = [score for _, score in prediction.top_k]
    assert len(prediction.top_k) == 3 and scores == sorted(scores, reverse=True)
    assert len({tenant for tenant, _ in prediction.top_k}) == 3
    assert prediction.abstain == (prediction.confidence < classifier.abstain_threshold)
