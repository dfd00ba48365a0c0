"""The live endpoint keeps its own contract.

Schemathesis reads the deployed endpoint's ``/openapi.json`` and sends every operation generated
requests, schema-valid and schema-invalid, with a valid bearer token and without one: no answer
may be a server error, every status must be declared and every body must match its schema.
A second deployment, whose model replica stalls (the ``serve.model.stall`` fault), a queue of one
and a 2 s request timeout, makes the declared limits fire: a full queue is 503 with Retry-After,
a model call that outlives ``serve.request_timeout_s`` is 504; under ``feedback.new_tenants:
reject`` feedback naming a tenant the model does not know is 422 naming ``tenant``.

The document exists only once the endpoint is deployed, and schemathesis 4.32's fixture-based
loader (``schemathesis.pytest.from_fixture``) fails under pytest 9 (it sets
``request.node._nodeid``), so each operation runs schemathesis's public pieces directly: the
live document from ``schemathesis.openapi.from_url``, ``APIOperation.as_strategy`` under the
Hypothesis settings of its config (derandomized, no example database), ``Case.call_and_validate``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import BaseSchema, GenerationMode

from pipelines.config import OncallConfig
from pipelines.data.feedback import FeedbackStore
from pipelines.faults import Faults
from pipelines.registry.versions import CHAMPION, Registry
from pipelines.training.job import TrainResult
from serve.router_model import STALL
from tests.integration.serving import deployed, serving_config

pytestmark = pytest.mark.usefixtures("ray_cluster")

TOKEN = "contract-token-for-tests"
MAX_TICKETS = 16
EXAMPLES = 30  # generated requests per operation, mode and auth: bounded, and derandomized below
OPEN = {"GET /healthz", "GET /readyz"}  # answer without a token
PROTECTED = {"POST /v1/route", "POST /v1/route/batch", "POST /v1/feedback", "GET /v1/model"}
SCHEMATHESIS_CONFIG = {
    "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
    # 413 is the declared answer to more tickets than serve.max_tickets_per_request (the document's
    # maxItems) and to a body over serve.max_body_bytes; schemathesis's default list of statuses
    # that reject invalid data lacks it. Nothing else is relaxed: every built-in check runs.
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "413", "422"]}},
}


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="class")
def endpoint(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The suite's trained model behind the shipped defaults, with auth on."""
    trained, result = trained_run
    feedback_db = tmp_path_factory.mktemp("feedback") / "feedback.db"
    config = serving_config(
        trained,
        "serve-openapi",
        f"sqlite:///{feedback_db}",
        **{"serve.auth_tokens": [TOKEN], "serve.max_tickets_per_request": MAX_TICKETS},
    )
    Registry(config).register_run(result.run_id, alias=CHAMPION)
    with deployed(config) as url:
        yield url


@pytest.fixture(scope="class")
def api(endpoint: str) -> BaseSchema:
    config = schemathesis.Config.from_dict(SCHEMATHESIS_CONFIG)
    return schemathesis.openapi.from_url(f"{endpoint}/openapi.json", config=config, timeout=30)


class TestOpenApiDocument:
    def test_the_document_describes_every_operation_and_the_batch_cap(self, api: BaseSchema) -> None:
        labels = {result.ok().label for result in api.get_all_operations()}
        assert labels == OPEN | PROTECTED
        tickets = api.raw_schema["components"]["schemas"]["BatchIn"]["properties"]["tickets"]
        assert tickets["maxItems"] == MAX_TICKETS

    @pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
    @pytest.mark.parametrize("label", sorted(OPEN | PROTECTED))
    def test_every_answer_is_declared_and_matches_the_document(
        self, api: BaseSchema, label: str, with_token: bool
    ) -> None:
        operation = api.find_operation_by_label(label)
        assert operation is not None
        headers = _bearer() if with_token else None
        inputs = (operation.body, operation.query, operation.headers, operation.path_parameters)
        # An operation without inputs has no invalid request to generate: positive only.
        modes = (
            [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            if any(map(len, inputs))
            else [GenerationMode.POSITIVE]
        )
        statuses: list[int] = []
        for mode in modes:
            _check(api, operation, mode, headers, statuses)
        if label in PROTECTED and not with_token:
            assert 401 in statuses and set(statuses) <= {401, 403}  # no token, or a generated one
        else:  # the generated requests reached the handlers: valid ones were answered
            assert any(200 <= status < 300 for status in statuses), statuses


def _check(
    api: BaseSchema,
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    headers: dict[str, str] | None,
    statuses: list[int],
) -> None:
    """Run every built-in check of schemathesis (no server error, status declared, body and
    headers as declared, valid data accepted, invalid data rejected, auth not ignored, …) on
    the generated requests, collecting their statuses."""
    settings = api.config.get_hypothesis_settings(operation=operation, phase="fuzzing")

    # too_slow: generating large bodies on a busy 2-core machine is not what this test is about.
    @hypothesis.settings(settings, suppress_health_check=[hypothesis.HealthCheck.too_slow])
    @hypothesis.given(case=operation.as_strategy(mode))
    def conforms(case: schemathesis.Case) -> None:
        statuses.append(case.call_and_validate(headers=headers, timeout=60).status_code)

    conforms()


@pytest.fixture(scope="class")
def stalled(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OncallConfig, str]]:
    """A model replica that takes two requests at a time and stalls each past the 2 s request
    timeout, a queue of one, and feedback refusing tenants the model does not know."""
    trained, result = trained_run
    feedback_db = tmp_path_factory.mktemp("feedback") / "feedback.db"
    config = serving_config(
        trained,
        "serve-limits",
        f"sqlite:///{feedback_db}",
        **{
            "serve.max_batch_size": 1,
            "serve.target_ongoing_requests": 1,  # with the batch size: 2 requests per model replica
            "serve.max_queued_requests": 1,
            "serve.request_timeout_s": 2.0,
            "feedback.new_tenants": "reject",
        },
    )
    Registry(config).register_run(result.run_id, alias=CHAMPION)
    with deployed(config, Faults.at(STALL)) as url:
        yield config, url


class TestDeclaredLimits:
    """In file order: feedback first (it asks the model replica only for its labels), then the
    burst that fills the stalled replica."""

    def test_feedback_naming_an_unknown_tenant_is_422_under_reject(
        self, stalled: tuple[OncallConfig, str], trained_run: tuple[OncallConfig, TrainResult]
    ) -> None:
        config, url = stalled
        known = trained_run[1].labels.tenants[0]
        unknown = requests.post(
            f"{url}/v1/feedback", json={"ticket_id": "INC-1", "tenant": "no-such-team"}, timeout=30
        )
        assert unknown.status_code == 422, unknown.text
        assert [error["loc"] for error in unknown.json()["detail"]] == [["body", "tenant"]]
        accepted = requests.post(
            f"{url}/v1/feedback", json={"ticket_id": "INC-2", "tenant": known}, timeout=30
        )
        assert accepted.status_code == 200, accepted.text
        store = FeedbackStore(config.feedback_db_url)
        assert store.get("INC-1") is None and store.get("INC-2").tenant == known

    def test_a_full_queue_is_503_with_retry_after_and_a_stalled_model_504(
        self, stalled: tuple[OncallConfig, str]
    ) -> None:
        """Six tickets, 0.1 s apart: two reach the stalled replica, one waits in its queue, the
        rest are turned away with Retry-After; those accepted are 504 once
        serve.request_timeout_s has passed (before Serve's own timeout, a 408)."""
        _, url = stalled

        def route(i: int) -> tuple[requests.Response, float]:
            time.sleep(0.1 * i)  # one at a time into the ingress, all within the 2 s timeout
            started = time.perf_counter()
            answer = requests.post(f"{url}/v1/route", json={"title": f"disk full on node {i}"}, timeout=30)
            return answer, time.perf_counter() - started

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(route, range(6)))
        statuses = [answer.status_code for answer, _ in answers]
        assert set(statuses) == {503, 504}, [(a.status_code, a.text) for a, _ in answers]
        assert statuses.count(504) <= 3  # at most two on the replica and one in its queue of one
        busy = [answer for answer, _ in answers if answer.status_code == 503]
        assert all(answer.headers["Retry-After"] == "1" for answer in busy)
        # The ingress's own answer (Serve's, should its ingress queue overflow, is plain text).
        assert any("too many requests queued" in answer.text for answer in busy)
        for answer, seconds in answers:
            if answer.status_code == 504:
                assert "serve.request_timeout_s" in answer.json()["detail"] and seconds >= 2.0
