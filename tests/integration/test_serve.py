"""The routing endpoint over real HTTP: contract, client mistakes, auth, batching, hot swap."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from pipelines.config import OncallConfig
from pipelines.data.feedback import FeedbackStore
from pipelines.registry.versions import CHAMPION, Registry
from pipelines.training.job import TrainResult
from serve.client import RouterClient, RouterError
from tests.integration.serving import archive_tickets, deployed, serving_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

TOKEN = "s3cret-token-for-tests"
MAX_TICKETS = 16


@pytest.fixture(scope="module")
def served(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OncallConfig, str]]:
    trained, result = trained_run
    feedback_db = tmp_path_factory.mktemp("feedback") / "feedback.db"
    config = serving_config(
        trained,
        "serve-contract",
        f"sqlite:///{feedback_db}",
        **{"serve.auth_tokens": [TOKEN], "serve.max_tickets_per_request": MAX_TICKETS},
    )
    Registry(config).register_run(result.run_id, alias=CHAMPION)
    with deployed(config) as url:
        yield config, url


@pytest.fixture(scope="module")
def client(served: tuple[OncallConfig, str]) -> RouterClient:
    return RouterClient(served[1], token=TOKEN)


@pytest.fixture(scope="module")
def tickets(small_archive: tuple[Path, dict]) -> list[dict]:
    return archive_tickets(small_archive[0], 40)


def assert_same_answer(got: dict, expected_tenant: str, expected_confidence: float, top_k: list) -> None:
    assert got["tenant"] == expected_tenant
    assert got["confidence"] == pytest.approx(expected_confidence, abs=1e-4)
    assert [entry["tenant"] for entry in got["top_k"]] == [tenant for tenant, _ in top_k]


def test_route_answers_exactly_like_the_classifier_of_the_same_version(
    served: tuple[OncallConfig, str], client: RouterClient, tickets: list[dict]
) -> None:
    config, _ = served
    classifier = Registry(config).load_classifier(alias=CHAMPION)
    expected = classifier.predict(tickets[:8], top_k=config.serve.top_k)
    for ticket, prediction in zip(tickets[:8], expected, strict=True):
        answer = client.route(ticket)
        assert answer["ticket_id"] == ticket["ticket_id"]
        assert answer["model"] == {"name": "serve-contract", "version": classifier.version}
        assert answer["abstain"] == prediction.abstain
        assert len(answer["top_k"]) == config.serve.top_k
        assert_same_answer(answer, prediction.tenant, prediction.confidence, prediction.top_k)
    anonymous = client.route({"title": tickets[0]["title"]})
    assert anonymous["ticket_id"].startswith("anon-")


def test_batch_results_equal_concurrent_single_calls_in_input_order(
    client: RouterClient, tickets: list[dict]
) -> None:
    batch = tickets[:MAX_TICKETS]
    with ThreadPoolExecutor(8) as pool:  # concurrent singles: @serve.batch groups them
        singles = list(pool.map(client.route, batch))
    results = client.route_batch(batch)
    assert [r["ticket_id"] for r in results] == [t["ticket_id"] for t in batch]
    for single, batched in zip(singles, results, strict=True):
        assert_same_answer(
            batched, single["tenant"], single["confidence"], [(e["tenant"], 0) for e in single["top_k"]]
        )


def test_model_info_health_and_openapi(served: tuple[OncallConfig, str], client: RouterClient) -> None:
    config, url = served
    info = client.model()
    ref = Registry(config).get(alias=CHAMPION)
    assert (info["name"], info["version"], info["alias"]) == ("serve-contract", ref.version, CHAMPION)
    assert info["tenants"] > 2 and info["trained_window"] == ref.tags["window.train"]
    # Health endpoints stay open when auth is on.
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    paths = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/route", "/v1/route/batch", "/v1/feedback", "/v1/model"} <= set(paths)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/route", {"description": "no title"}, "title"),
        ("/v1/route", {"title": "   "}, "title"),
        ("/v1/route", {"title": 42}, "title"),
        ("/v1/route", {"title": "ok", "ticket_id": "x" * 300}, "ticket_id"),
        ("/v1/route/batch", {"tickets": []}, "tickets"),
        ("/v1/route/batch", {"tickets": [{"title": "ok"}, {"service": "db"}]}, "title"),
        ("/v1/feedback", {"ticket_id": "T-1"}, "tenant"),
        ("/v1/feedback", {"ticket_id": "T-1", "tenant": ""}, "tenant"),
        ("/v1/route", {"title": "\u001c\u0000 \u007f"}, "title"),  # no text once repaired
        ("/v1/route", {"title": "ok", "ticket_id": "INC-\ud800"}, "ticket_id"),  # echoed: must encode
        ("/v1/feedback", {"ticket_id": "T-1", "tenant": "team\u0000a"}, "tenant"),
        ("/v1/route", {"title": "ok", "description": "x" * 70_000}, "description"),
    ],
)
def test_invalid_payloads_are_422_naming_the_field(
    served: tuple[OncallConfig, str], path: str, body: dict, field: str
) -> None:
    response = requests.post(f"{served[1]}{path}", json=body, headers=_auth(), timeout=30)
    assert response.status_code == 422, response.text
    assert any(field in error["loc"] for error in response.json()["detail"])


def test_malformed_json_too_many_tickets_and_long_text(served: tuple[OncallConfig, str]) -> None:
    url = served[1]
    broken = requests.post(
        f"{url}/v1/route",
        data=b'{"title": ',
        headers={**_auth(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert broken.status_code == 422
    too_many = requests.post(
        f"{url}/v1/route/batch",
        json={"tickets": [{"title": "t"}] * (MAX_TICKETS + 1)},
        headers=_auth(),
        timeout=30,
    )
    assert too_many.status_code == 413 and "at most 16" in too_many.json()["detail"]
    long_text = requests.post(
        f"{url}/v1/route",
        json={"title": "disk full " * 400, "description": "x" * 60_000},
        headers=_auth(),
        timeout=60,
    )
    assert long_text.status_code == 200  # truncated by the text builder, not rejected
    over_cap = requests.post(f"{url}/v1/route", json={"title": "x" * 5000}, headers=_auth(), timeout=30)
    assert over_cap.status_code == 422 and "title" in over_cap.json()["detail"][0]["loc"]


HOSTILE = [
    {"title": "ok", "description": "\ud800"},  # a lone surrogate: 422 naming the description
    {"title": "\u001c"},  # nothing but a control character: 422 naming the title
    {"title": "disk\u0000 full\u0085", "service": "a\u0000b", "description": "\u001f" * 300},  # repaired: 200
]


def test_hostile_tickets_never_fail_their_neighbours(
    served: tuple[OncallConfig, str], tickets: list[dict]
) -> None:
    """Concurrent callers share a model batch: 8 clients sending hostile tickets next to 8
    normal ones; every normal request is answered, every hostile one is 200 or 422."""
    url = served[1]
    statuses: dict[str, list[int]] = {"good": [], "bad": []}

    def send(kind: str, body: dict) -> None:
        for _ in range(10):
            response = requests.post(f"{url}/v1/route", json=body, headers=_auth(), timeout=60)
            statuses[kind].append(response.status_code)

    jobs = [("good", tickets[i]) for i in range(8)] + [("bad", HOSTILE[i % len(HOSTILE)]) for i in range(8)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: send(*job), jobs))
    assert statuses["good"] == [200] * 80
    assert set(statuses["bad"]) <= {200, 422} and {200, 422} <= set(statuses["bad"])


def _raw_post(url: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, float]:
    """Send the request line and headers (and ``body``, maybe much less than Content-Length
    announces); return the status line's code and the seconds it took to arrive."""
    parts = urlsplit(url)
    started = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status_line = connection.makefile("rb").readline().decode()
    return int(status_line.split()[1]), time.perf_counter() - started


def test_auth_and_size_are_checked_before_the_body_is_read(served: tuple[OncallConfig, str]) -> None:
    url = served[1]
    empty = requests.post(f"{url}/v1/route", json={}, timeout=30)
    assert empty.status_code == 401 and "title" not in empty.text  # no schema to a stranger
    json_headers = {"Content-Type": "application/json", "Content-Length": str(30 * 2**20)}
    # 30 MB announced, none sent: the answer cannot have waited for the body.
    assert _raw_post(url, "/v1/route", json_headers)[0] == 401
    code, seconds = _raw_post(url, "/v1/route/batch", {**json_headers, **_auth()})
    assert code == 413 and seconds < 1.0
    many = json.dumps({"tickets": [{"title": f"ticket {i}"} for i in range(100_000)]}).encode()
    for headers, expected in (({}, 401), (_auth(), 413)):
        started = time.perf_counter()
        answer = requests.post(
            f"{url}/v1/route/batch",
            data=many,
            headers={**headers, "Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == expected and time.perf_counter() - started < 1.0
    streamed = requests.post(
        f"{url}/v1/route",
        data=iter([b'{"title": "' + b"x" * 2**20] * 4),  # chunked: no Content-Length to trust
        headers={**_auth(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413
    responses = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]["/v1/route"]["post"][
        "responses"
    ]
    assert {"400", "401", "403", "413", "422", "503", "504"} <= set(responses)


def test_auth_401_without_token_403_with_a_wrong_one(served: tuple[OncallConfig, str]) -> None:
    url = served[1]
    missing = requests.post(f"{url}/v1/route", json={"title": "t"}, timeout=30)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.get(f"{url}/v1/model", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403
    basic = requests.post(
        f"{url}/v1/feedback",
        json={"ticket_id": "T", "tenant": "a"},
        headers={"Authorization": "Basic dTpw"},
        timeout=30,
    )
    assert basic.status_code == 401


def test_concurrent_feedback_for_one_ticket_leaves_one_row(
    served: tuple[OncallConfig, str], client: RouterClient
) -> None:
    config, _ = served
    tenants = [f"team-{i}" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        acks = list(pool.map(lambda tenant: client.feedback("INC-race", tenant, source="test"), tenants))
    assert all(ack["stored"] for ack in acks)
    rows = FeedbackStore(config.feedback_db_url).read()
    race = rows[rows.ticket_id == "INC-race"]
    assert len(race) == 1 and race.tenant.iloc[0] in tenants
    client.feedback("INC-race", "the-final-owner")
    assert FeedbackStore(config.feedback_db_url).get("INC-race").tenant == "the-final-owner"


def test_feedback_naming_a_tenant_the_model_does_not_know_is_stored_under_hold(
    served: tuple[OncallConfig, str], client: RouterClient, trained_run: tuple[OncallConfig, TrainResult]
) -> None:
    """feedback.new_tenants is hold (the default): the nightly decides, the endpoint stores it."""
    config, _ = served
    assert config.feedback.new_tenants == "hold"
    assert "brand-new-team" not in trained_run[1].labels.tenants
    assert client.feedback("INC-new-team", "brand-new-team")["stored"]
    assert FeedbackStore(config.feedback_db_url).get("INC-new-team").tenant == "brand-new-team"


def test_prometheus_metrics_are_exported(served: tuple[OncallConfig, str], client: RouterClient) -> None:
    import ray

    config, url = served
    client.route({"title": "metrics probe"})
    requests.post(f"{url}/v1/route", json={}, headers=_auth(), timeout=30)  # a 422
    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = {
        "200": lambda line: (
            "oncall_router_requests" in line and 'route="/v1/route"' in line and 'status="200"' in line
        ),
        "422": lambda line: "oncall_router_requests" in line and 'status="422"' in line,
        "batch size": lambda line: line.startswith("ray_oncall_router_batch_size_count"),
        "version": lambda line: (
            line.startswith("ray_oncall_router_model_version")
            and line.endswith(f" {float(Registry(config).get(alias=CHAMPION).version)}")
        ),
    }
    deadline = time.monotonic() + 45  # the metrics agent exports every few seconds
    missing = set(wanted)
    while missing and time.monotonic() < deadline:
        lines = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
        missing = {name for name in missing if not any(wanted[name](line) for line in lines)}
        if missing:
            time.sleep(2)
    assert not missing


def test_hot_swap_under_load_loses_no_request_and_switches_version(
    served: tuple[OncallConfig, str],
    client: RouterClient,
    trained_run: tuple[OncallConfig, TrainResult],
    tickets: list[dict],
) -> None:
    config, _ = served
    registry = Registry(config)
    old = registry.get(alias=CHAMPION).version
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def keep_routing() -> None:
        i = 0
        while not stop.is_set():
            try:
                seen.append(client.route(tickets[i % len(tickets)])["model"]["version"])
            except RouterError as exc:  # an error answer, or none within the retry bounds
                failures.append(repr(exc))
            i += 1

    workers = [threading.Thread(target=keep_routing) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        new = registry.register_run(trained_run[1].run_id, alias=CHAMPION).version
        deadline = time.monotonic() + 60
        while new not in seen[-4:] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not failures
    assert seen[0] == old and seen[-1] == new
    first_new = seen.index(new)
    assert old not in seen[first_new + 8 :]  # once swapped, the old version is gone (one replica)
    assert client.model()["version"] == new


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
