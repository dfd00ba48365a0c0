"""platform/observability against a running endpoint: every metric its alert rules and dashboard
name is in a scrape of Ray's metrics port, with the values the rules rely on (the served version,
the nightly's last success from the registry, unhandled errors counted as 500); where a
`prometheus` binary is installed, a real Prometheus scrapes the endpoint, evaluates every rule and
answers every panel's query."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
import requests
import yaml

from pipelines.config import OncallConfig
from pipelines.registry.versions import CHAMPION, Registry
from pipelines.training.job import TrainResult
from tests.integration.mlflow_server import free_port
from tests.integration.serving import archive_tickets, deployed, serving_config
from tests.unit.test_observability import alert_rules, metrics_used, query_panels, rule_document

pytestmark = pytest.mark.usefixtures("ray_cluster")

DEADLINE_S = 60  # NOTES.md: custom Serve metrics appear 5-10 s after they are recorded
FEEDBACK_TABLE = "routing_feedback"
GAUGE_TTL_S = 30  # Ray drops a gauge that is not set again for ~20-30 s (serve/metrics.py)
PANEL_RATE_WINDOW = "30s"  # what Grafana's $__rate_interval becomes here (1 s scrapes)


class Served(NamedTuple):
    config: OncallConfig
    url: str
    feedback_db: Path
    nightly_success: dt.datetime


@pytest.fixture(scope="module")
def served(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    trained, result = trained_run
    feedback_db = tmp_path_factory.mktemp("observability") / "feedback.db"
    config = serving_config(trained, "observability", f"sqlite:///{feedback_db}")
    registry = Registry(config)
    registry.register_run(result.run_id, alias=CHAMPION)
    nightly_success = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    registry.record_nightly_success(nightly_success)
    with deployed(config) as url:
        yield Served(config, url, feedback_db, nightly_success)


def metrics_port() -> int:
    import ray

    return ray.nodes()[0]["MetricsExportPort"]


def scrape() -> list[str]:
    text = requests.get(f"http://127.0.0.1:{metrics_port()}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def wait_for(missing: Callable[[], set[str]]) -> set[str]:
    """Call ``missing()`` until it is empty or the deadline passes; what is still missing."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        left = missing()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(2)


def values(lines: list[str], name: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in lines if line.split("{")[0].split(" ")[0] == name]


# Counters of rare events: Ray exports a counter only once it was incremented (it refuses inc(0)), so
# these appear after the event; tests/unit/serve counts them (test_isolation, test_request_counting).
EVENT_COUNTERS = {"ray_oncall_router_unscorable_tickets_total", "ray_oncall_router_model_load_failures_total"}


def send_traffic(url: str, tickets: list[dict]) -> list[dict]:
    batch = requests.post(f"{url}/v1/route/batch", json={"tickets": tickets}, timeout=60)
    batch.raise_for_status()
    for ticket in tickets[:4]:
        requests.post(f"{url}/v1/route", json=ticket, timeout=30).raise_for_status()
    return batch.json()["results"]


def test_every_metric_of_the_rules_and_the_dashboard_is_scraped(
    served: Served, small_archive: tuple[Path, dict]
) -> None:
    results = send_traffic(served.url, archive_tickets(small_archive[0], 40))
    assert any(result["abstain"] for result in results), "no abstention to count"
    version = float(Registry(served.config).get(alias=CHAMPION).version)
    wanted = metrics_used()

    def missing() -> set[str]:
        lines = scrape()
        names = {line.split("{")[0].split(" ")[0] for line in lines}
        left = {name for name in wanted if name not in names and name not in EVENT_COUNTERS}
        if version not in values(lines, "ray_oncall_router_model_version"):
            left.add(f"ray_oncall_router_model_version = {version}")
        nightly = values(lines, "ray_oncall_router_nightly_last_success_timestamp_seconds")
        if served.nightly_success.timestamp() not in nightly:
            left.add(f"ray_oncall_router_nightly_last_success_timestamp_seconds = {served.nightly_success}")
        return left

    left = wait_for(missing)
    assert not left, {name: sorted(wanted.get(name, ())) for name in left}
    time.sleep(GAUGE_TTL_S)  # no new traffic, no swap: the gauges must still be there
    left = {name for name in missing() if "=" in name}
    assert not left, left


@contextmanager
def prometheus(scrape_port: int, folder: Path) -> Iterator[str]:
    """A Prometheus on 127.0.0.1 scraping ``scrape_port`` every second, with our alert rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian: the `prometheus` package)")
    rules = folder / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_document()["spec"]), encoding="utf-8")
    config = folder / "prometheus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}]}
                ],
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (folder / "prometheus.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def query(prometheus_url: str, expr: str) -> list[dict]:
    answer = requests.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    return answer.json()["data"]["result"] if answer.ok else []


def test_prometheus_evaluates_every_rule_and_answers_every_panel(
    served: Served, small_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    exprs = {
        f"{panel['title']} / {target['refId']}": target["expr"].replace("$__rate_interval", PANEL_RATE_WINDOW)
        for panel in query_panels()
        for target in panel["targets"]
    }
    tickets = archive_tickets(small_archive[0], 40)
    with prometheus(metrics_port(), tmp_path) as url:

        def unanswered() -> set[str]:
            send_traffic(served.url, tickets)  # rates need two scrapes that saw the counters move
            return {name for name, expr in exprs.items() if not query(url, expr)}

        assert not wait_for(unanswered)
        rules = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        states = {rule["name"]: (rule["health"], rule["state"]) for group in rules for rule in group["rules"]}
    assert set(states) == {rule["alert"] for rule in alert_rules()}
    assert {health for health, _ in states.values()} == {"ok"}, states
    # A model is loaded and the nightly succeeded an hour ago: these two must be quiet.
    assert states["OncallRouterNoModelLoaded"][1] == "inactive"
    assert states["OncallRouterNightlyStale"][1] == "inactive"


def test_a_broken_feedback_store_is_a_503_and_counted(served: Served) -> None:
    first = requests.post(f"{served.url}/v1/feedback", json={"ticket_id": "INC-0", "tenant": "t"}, timeout=30)
    assert first.status_code == 200  # the store is opened on first use
    with closing(sqlite3.connect(served.feedback_db)) as connection:  # the store breaks under the endpoint
        connection.execute(f"DROP TABLE {FEEDBACK_TABLE}")
    answer = requests.post(
        f"{served.url}/v1/feedback", json={"ticket_id": "INC-1", "tenant": "t"}, timeout=30
    )
    assert answer.status_code == 503 and answer.headers.get("Retry-After")

    def missing() -> set[str]:
        counted = [
            line
            for line in scrape()
            if line.startswith("ray_oncall_router_requests_total{")
            and 'route="/v1/feedback"' in line
            and 'status="503"' in line
        ]
        return set() if counted else {"a 503 on /v1/feedback"}

    assert not wait_for(missing)
