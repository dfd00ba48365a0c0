"""The KubeRay manifests (platform/kuberay) stay consistent with the code: they parse, the
RayService serves the same application as platform/serve/serve_config.yaml, and every
`oncall-router …` they run is a real command. No cluster needed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "platform" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
# `oncall-router [--global-option VALUE]… COMMAND`: global options all take a value.
COMMAND = re.compile(r"(?<![\w./-])oncall-router(?:[ \t]+--[\w-]+(?:=\S+|[ \t]+\S+))*[ \t]+([a-z][\w-]*)")
# Where a manifest says what runs: a RayJob's entrypoint, a container's command and args.
COMMAND_KEYS = ("entrypoint", "command", "args")
EXPECTED_FILES = {"rayservice.yaml", "rayjob-train.yaml", "nightly-cronjob.yaml", "raycronjob.yaml"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def embedded_documents(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Manifests kept as text in a ConfigMap (e.g. the nightly's RayJob template)."""
    if doc.get("kind") == "ConfigMap":
        for key, text in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                yield from (d for d in yaml.safe_load_all(text) if d is not None)


def all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in documents(path):
            yield path.name, doc
            for inner in embedded_documents(doc):
                yield f"{path.name} (embedded)", inner


def command_lines(node: Any) -> Iterator[str]:
    """The text of every entrypoint, command and args (a list joined into one line)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in COMMAND_KEYS and isinstance(value, str):
                yield value
            elif key in COMMAND_KEYS and isinstance(value, list):
                yield " ".join(str(item) for item in value)
            else:
                yield from command_lines(value)
    elif isinstance(node, list):
        for item in node:
            yield from command_lines(item)


def test_the_manifests_are_there() -> None:
    assert {path.name for path in MANIFESTS} >= EXPECTED_FILES


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_every_manifest_parses_and_names_its_object(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no document"
    assert path.read_text(encoding="utf-8").lstrip().startswith("#"), f"{path.name}: header comment"
    for doc in [*docs, *(inner for outer in docs for inner in embedded_documents(outer))]:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), f"{path.name}: a {doc['kind']} without metadata.name"


def test_rayservice_serves_the_same_application_as_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    (service,) = [doc for doc in documents(KUBERAY / "rayservice.yaml") if doc["kind"] == "RayService"]
    deployed = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    local = ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "platform" / "serve" / "serve_config.yaml").read_text(encoding="utf-8"))
    )
    assert [app.import_path for app in deployed.applications] == [
        app.import_path for app in local.applications
    ]
    assert deployed.applications[0].import_path == "serve.app:build_app"
    assert {d.name for d in deployed.applications[0].deployments} <= {
        d.name for d in local.applications[0].deployments
    }


def test_production_stores_come_from_the_environment_and_secrets() -> None:
    (service,) = [doc for doc in documents(KUBERAY / "rayservice.yaml") if doc["kind"] == "RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert env["ONCALL_TRACKING_URI"]["value"] == "http://mlflow:5000"
        for name in ("ONCALL_SERVE__FEEDBACK_DB_URL", "ONCALL_SERVE_TOKENS"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "oncall-router", name


def test_every_oncall_router_command_exists() -> None:
    from pipelines.cli import app

    registered = {command.name for command in app.registered_commands}
    used: dict[str, set[str]] = {}
    for where, doc in all_documents():
        for text in command_lines(doc):
            for command in COMMAND.findall(text):
                used.setdefault(command, set()).add(where)
    assert {"train", "promote", "nightly"} <= set(used), used  # the regex finds what is there
    unknown = {command: sorted(places) for command, places in used.items() if command not in registered}
    assert not unknown, f"commands used in platform/kuberay but not in pipelines.cli: {unknown}"
