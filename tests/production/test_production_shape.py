"""The production shape end to end, started by the same script as `make prod-up`: a three-node Ray
cluster (`ray start`, token auth), S3 (moto server), `mlflow server` on PostgreSQL with artifacts
in the bucket. Jobs go through `ray job submit` with the installed CLI as entrypoint, Serve
through `serve deploy platform/serve/serve_config.yaml`. Faults: a worker node killed while it
trains, a node hosting a model replica killed under load.

The tests run in file order and share one environment (module fixture): each step builds on the
previous one, as a platform team's runbook would. Needs ONCALL_TEST_POSTGRES_URL (.ci/run sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "platform" / "local" / "production.py"
BIN = Path(sys.executable).parent
BUCKET = "oncall"
SERVE_URL = "http://127.0.0.1:8000"  # platform/serve/serve_config.yaml's port
SAMPLE = ["--days", "9", "--tickets-per-day", "120", "--tenants", "10", "--new-tenants", "1", "--moves", "1"]
ARCHIVE_ROWS = 9 * 120
FIRST_TRAINING_DAY_END = "2026-10-07"  # the nightly of 2026-10-09 ingests the 2 days after it
NIGHTLY_DATE = "2026-10-09"
JOB_TIMEOUT_S = 600
MAX_FAILED_SHARE = 0.01

pytestmark = pytest.mark.timeout(1200)


@dataclass
class Production:
    directory: Path
    environment: dict[str, str]

    def run(self, *command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command, env=self.environment, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        assert result.returncode == 0, (
            f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        return result

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI on this machine (a user's shell with prod.env sourced)."""
        return self.run(str(BIN / "oncall-router"), *args)

    def submit(self, *args: str, **settings: str) -> str:
        """``ray job submit --no-wait -- oncall-router ARGS`` with config overrides in the job's
        runtime environment, as a user would set them (2 epochs, plus ``settings``: env names);
        returns the submission id."""
        runtime_env = json.dumps({"env_vars": {"ONCALL_TRAIN__EPOCHS": "2", **settings}})
        result = self.run(
            str(BIN / "ray"), "job", "submit", "--no-wait", "--runtime-env-json", runtime_env,
            "--", "oncall-router", *args,
        )  # fmt: skip
        words = (result.stdout + result.stderr).replace("'", " ").split()
        return next(word for word in words if word.startswith("raysubmit_"))

    def wait_job(self, submission: str, timeout: float = JOB_TIMEOUT_S) -> str:
        """Waits until the job ends; its logs. Fails naming the job and its last lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.run(str(BIN / "ray"), "job", "status", submission)
            status = result.stdout + result.stderr
            if any(word in status.lower() for word in ("succeeded", "failed", "stopped")):
                break
            time.sleep(3)
        logs = self.run(str(BIN / "ray"), "job", "logs", submission).stdout
        assert "succeeded" in status.lower(), f"job {submission} did not succeed:\n{status}\n{logs[-4000:]}"
        return logs

    def script(self, *args: str) -> None:
        self.run(sys.executable, str(SCRIPT), "--dir", str(self.directory), *args, timeout=240)

    def s3_keys(self, prefix: str) -> list[str]:
        client = boto3.client(
            "s3",
            endpoint_url=self.environment["AWS_ENDPOINT_URL"],
            region_name=self.environment["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.environment["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.environment["AWS_SECRET_ACCESS_KEY"],
        )
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def tracking(self) -> str:
        return "http://" + self.config()["registry"]["tracking_uri"].split("://", 1)[1]

    def config(self) -> dict:
        import yaml

        return yaml.safe_load((self.directory / "prod.yaml").read_text())


@pytest.fixture(scope="module")
def production() -> Iterator[Production]:
    postgres = os.environ.get("ONCALL_TEST_POSTGRES_URL")
    if not postgres:
        pytest.skip("ONCALL_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    directory = Path("/tmp") / f"ocp-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths
    database = f"oncall_test_{uuid.uuid4().hex[:8]}"
    up = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dir",
            str(directory),
            "up",
            "--postgres-url",
            postgres,
            "--database",
            database,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        sys.path.insert(0, str(SCRIPT.parent))
        from production import read_environment  # the script's own reading of prod.env

        environment = {
            name: value for name, value in os.environ.items() if not name.startswith(("ONCALL_", "RAY_"))
        }
        environment.update(read_environment(directory))
        yield Production(directory, environment)
    finally:
        subprocess.run(
            [sys.executable, str(SCRIPT), "--dir", str(directory), "down", "--purge"],
            capture_output=True,
            timeout=120,
        )


def test_the_cluster_has_three_nodes_with_token_auth(production: Production) -> None:
    nodes = json.loads(
        production.run(sys.executable, str(SCRIPT), "--dir", str(production.directory), "status").stdout
    )
    assert set(nodes) == {"head", "worker1", "worker2"} and len(set(nodes.values())) == 3
    # Token auth is on: a client without the token is refused.
    without_token = {k: v for k, v in production.environment.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(
        [str(BIN / "ray"), "job", "list"], env=without_token, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0


def test_archive_and_base_from_object_storage(production: Production) -> None:
    production.cli("sample-data", *SAMPLE)
    assert any(key.startswith("archive/date=") for key in production.s3_keys("archive/"))
    production.cli("init-base")
    report = json.loads(production.cli("--json", "validate").stdout)
    assert report["rows"] == ARCHIVE_ROWS


def test_training_on_two_nodes_resumes_from_a_checkpoint_in_the_bucket_after_a_node_dies(
    production: Production,
) -> None:
    submission = production.submit("train", "--until", FIRST_TRAINING_DAY_END)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not [k for k in production.s3_keys("ray/") if "/checkpoint_" in k] and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(4)  # let the controller register the report (NOTES)
    production.script("kill-node", "worker1")
    time.sleep(5)
    production.script("start-node", "worker1")  # the replaced pod
    logs = production.wait_job(submission)
    assert "registered: models:/oncall-router/1" in logs

    import mlflow

    # both URIs: an earlier test in this process may have set a global registry URI
    client = mlflow.MlflowClient(tracking_uri=production.tracking(), registry_uri=production.tracking())
    version = client.get_model_version("oncall-router", "1")
    run = client.get_run(version.run_id)
    assert run.data.metrics["resumed_from_step"] > 0, "the run did not resume from a checkpoint"
    assert run.data.tags["checkpoint"].startswith(f"s3://{BUCKET}/ray/")
    assert version.source.startswith(("mlflow-artifacts:", "models:/")) or "mlartifacts" in version.source
    assert production.s3_keys("mlartifacts/"), "MLflow artifacts are not in the bucket"


def test_promote_and_serve_deploy_of_serve_config(production: Production) -> None:
    production.wait_job(production.submit("promote"))
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{SERVE_URL}/readyz", timeout=2)  # nothing else on the port
    production.run(str(BIN / "serve"), "deploy", str(ROOT / "platform" / "serve" / "serve_config.yaml"))
    wait_until(lambda: _get(f"{SERVE_URL}/readyz") == 200 and len(replica_nodes(production)) == 2, 180)
    assert requests.get(f"{SERVE_URL}/v1/model", timeout=10).json()["version"] == "1"
    routed = requests.post(f"{SERVE_URL}/v1/route", json={"title": "disk full", "service": "x"}, timeout=30)
    assert routed.status_code == 200 and routed.json()["top_k"]
    feedback = requests.post(
        f"{SERVE_URL}/v1/feedback",
        json={"ticket_id": "prod-1", "tenant": routed.json()["top_k"][1]["tenant"]},
        timeout=30,
    )
    assert feedback.status_code == 200 and feedback.json()["stored"] is True


def test_a_node_hosting_a_model_replica_dies_under_load(production: Production) -> None:
    victims = [node for node in replica_nodes(production) if node != "head"]
    assert victims, "no model replica on a worker node"
    results: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                status = session.post(
                    f"{SERVE_URL}/v1/route", json={"title": "db down"}, timeout=30
                ).status_code
            except requests.RequestException:
                status = 0
            results["ok" if status == 200 else f"failed {status}"] += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(8)
    production.script("kill-node", victims[0])
    time.sleep(25)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
    failed = sum(n for outcome, n in results.items() if outcome != "ok")
    total = sum(results.values())
    assert total > 50 and failed / total <= MAX_FAILED_SHARE, dict(results)
    wait_until(lambda: len(replica_nodes(production)) == 2, 120)  # the replica comes back
    production.script("start-node", victims[0])


def test_nightly_promotes_and_the_endpoint_hot_swaps(production: Production) -> None:
    # Its rescore step is left to the rescore job below (the same code, timed once).
    nightly = production.submit("nightly", "--date", NIGHTLY_DATE, ONCALL_NIGHTLY__RESCORE_DAYS="0")
    logs = production.wait_job(nightly)
    assert "version 2 is now champion" in logs
    wait_until(lambda: requests.get(f"{SERVE_URL}/v1/model", timeout=10).json()["version"] == "2", 120)


def test_rescore_from_the_bucket_to_the_scored_table(production: Production) -> None:
    production.wait_job(production.submit("rescore"))
    from pyiceberg.catalog.sql import SqlCatalog

    config = production.config()
    catalog = SqlCatalog(
        "oncall",
        uri=config["rescore"]["catalog_uri"],
        **{
            "s3.endpoint": config["storage"]["endpoint_url"],
            "s3.region": config["storage"]["region"],
            "s3.access-key-id": production.environment["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": production.environment["AWS_SECRET_ACCESS_KEY"],
        },
    )
    table = catalog.load_table(config["rescore"].get("table", "oncall.scored_tickets"))
    rows = table.scan().to_pandas()
    version = rows[rows["model_version"] == "2"]
    assert len(version) == ARCHIVE_ROWS
    assert version["ticket_id"].is_unique


# --- helpers -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(2)
    raise AssertionError(f"not true within {timeout:.0f} s: {condition}")


def _get(url: str) -> int:
    return requests.get(url, timeout=5).status_code


def replica_nodes(production: Production) -> list[str]:
    """Names of the nodes hosting a live model replica."""
    from production import alive_nodes

    actors = json.loads(
        production.run(
            str(BIN / "ray"), "list", "actors", "--format", "json", "--detail", "--limit", "500",
            "--filter", "state=ALIVE", "--address", production.environment["RAY_API_SERVER_ADDRESS"],
        ).stdout
    )  # fmt: skip
    by_id = {node_id: name for name, node_id in alive_nodes(production.environment).items()}
    return [
        by_id.get(actor["node_id"], "?")
        for actor in actors
        if "TicketRouterModel" in (actor.get("class_name") or "")
    ]


def test_without_an_address_a_command_starts_its_own_local_ray(production: Production) -> None:
    """A `ray start` cluster runs on this machine: a command without RAY_ADDRESS must not join it
    (Ray's own default) but start a fresh local Ray."""
    local = {k: v for k, v in production.environment.items() if k != "RAY_ADDRESS"}
    probe = (
        "import ray\n"
        "from pipelines.ray_runtime import ray_session\n"
        "with ray_session():\n"
        "    print(len(ray.nodes()), ray.get_runtime_context().gcs_address)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=local, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    nodes, address = result.stdout.split()
    assert nodes == "1" and not address.endswith(
        f":{production.environment['RAY_ADDRESS'].rsplit(':', 1)[1]}"
    )
