"""The KubeRay manifests (platform/kuberay) stay consistent with the code and with Kubernetes:
they parse; every object, also the ones embedded in ConfigMaps, passes its schema (RayService,
RayJob, RayCronJob: the openAPIV3Schema of KubeRay's own v1.7.0 CRDs, with unknown fields
rejected; core kinds: kubernetes-validate's strict schemas); the RayService serves the same
application as platform/serve/serve_config.yaml; every `oncall-router …` they run is a real
command and reads the platform config of the ConfigMap; secrets come from Secrets only; and the
production settings hold (GCS fault tolerance, the dashboard on the pod network, a network policy
that opens only the Serve port, resource requests everywhere). No cluster needed."""

from __future__ import annotations

import copy
import functools
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "platform" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
# `oncall-router [--global-option VALUE]… COMMAND`: global options all take a value.
COMMAND = re.compile(r"(?<![\w./-])oncall-router(?:[ \t]+--[\w-]+(?:=\S+|[ \t]+\S+))*[ \t]+([a-z][\w-]*)")
# Where a manifest says what runs: a RayJob's entrypoint, a container's command and args.
COMMAND_KEYS = ("entrypoint", "command", "args")
EXPECTED_FILES = {
    "rayservice.yaml",
    "rayjob-train.yaml",
    "nightly-cronjob.yaml",
    "raycronjob.yaml",
    "shared-volume.yaml",
    "platform-config.yaml",
    "network-policy.yaml",
}
# KubeRay's CRDs (v1.7.0, unchanged): a checkout's sibling shared/ folder, or KUBERAY_CRDS_DIR.
CRDS = Path(os.environ.get("KUBERAY_CRDS_DIR", ROOT.parent / "shared" / "kuberay-crds"))
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService", "RayCronJob"}
# Core kinds are checked against this Kubernetes version's schemas (shipped with kubernetes-validate,
# no network); 1.33 is the kubectl of nightly-cronjob.yaml and has CronJob.spec.timeZone.
KUBERNETES_VERSION = "1.33.0"
# The one image placeholder (README: The image and the KubeRay manifests), tagged with the version.
IMAGE = "registry.example.com/oncall-router"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
OTHER_IMAGES = {"registry.k8s.io/kubectl:v1.33.0"}  # the nightly's submit step (distroless kubectl)
CONFIG_MAP = "oncall-router-config"
CONFIG_FILE = "/etc/oncall/oncall.yaml"
SECRET = "oncall-router"
# Environment variables that carry secrets, and the Secret key each comes from.
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "aws-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key",
    "PGPASSWORD": "db-password",
    "ONCALL_SERVE_TOKENS": "serve-tokens",
}
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)
SERVE_PORT = 8000


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def embedded_documents(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Kubernetes objects kept as text in a ConfigMap (e.g. the nightly's RayJob template); other
    YAML there (the platform config) is not an object."""
    if doc.get("kind") == "ConfigMap":
        for key, text in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                yield from (d for d in yaml.safe_load_all(text) if isinstance(d, dict) and "apiVersion" in d)


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


def find(node: Any, match: Callable[[dict[str, Any]], bool]) -> Iterator[dict[str, Any]]:
    """Every mapping in ``node`` (depth first) for which ``match`` holds."""
    if isinstance(node, dict):
        if match(node):
            yield node
        for value in node.values():
            yield from find(value, match)
    elif isinstance(node, list):
        for item in node:
            yield from find(item, match)


def ray_cluster_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every RayCluster spec in a document (a RayService's, a RayJob's, a RayCronJob's)."""
    return find(doc, lambda node: "headGroupSpec" in node)


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every pod spec in a document (Ray groups, submitters, CronJob pods)."""
    return find(doc, lambda node: isinstance(node.get("containers"), list))


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def ray_pod_templates(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in ray_cluster_specs(doc):
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            yield group["template"]


def the(kind: str, path: str) -> dict[str, Any]:
    (doc,) = [doc for doc in documents(KUBERAY / path) if doc["kind"] == kind]
    return doc


def platform_config_text() -> str:
    (config_map,) = [
        doc
        for _, doc in all_documents()
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == CONFIG_MAP
    ]
    return config_map["data"][Path(CONFIG_FILE).name]


# -- schemas -------------------------------------------------------------------------------------


def closed(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a JSON Schema that rejects unknown fields, as the API
    server prunes or (kubectl --validate=strict) rejects them: an object with `properties` is
    closed unless it preserves unknown fields; `nullable` admits null."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items() if key != "description"}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) → a validator of KubeRay's served versions."""
    assert CRDS.is_dir(), f"KubeRay CRDs not found at {CRDS}: set KUBERAY_CRDS_DIR to the v1.7.0 CRDs"
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = closed(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    assert {kind for _, kind in validators} >= KUBERAY_KINDS, sorted(validators)
    return validators


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """What the schema of the object's kind says is wrong with it ('path: message'), or []."""
    if doc["kind"] in KUBERAY_KINDS:
        validator = crd_validators().get((doc["apiVersion"], doc["kind"]))
        assert validator, f"{doc['apiVersion']} {doc['kind']} is not served by KubeRay 1.7.0"
        return [
            f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in sorted(
                validator.iter_errors(doc), key=lambda error: list(map(str, error.absolute_path))
            )
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}"]
    return []


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


DOCUMENTS = [(where, doc) for where, doc in all_documents()]


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in DOCUMENTS],
    ids=[f"{where}:{doc['kind']}/{doc['metadata']['name']}" for where, doc in DOCUMENTS],
)
def test_every_object_passes_its_schema(doc: dict[str, Any]) -> None:
    assert schema_errors(doc) == []


def _rayservice_head_container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _set(doc: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    broken = copy.deepcopy(doc)
    change(broken)
    return broken


# Broken copies of the real objects, and the field the error must name.
BROKEN: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "RayService: a typo in a container (resource)": (
        lambda: _set(
            the("RayService", "rayservice.yaml"),
            lambda d: _rayservice_head_container(d).update(
                resource=_rayservice_head_container(d).pop("resources")
            ),
        ),
        "'resource' was unexpected",
    ),
    "RayService: an unknown GCS fault tolerance field": (
        lambda: _set(
            the("RayService", "rayservice.yaml"),
            lambda d: d["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"].update(redisHost="redis"),
        ),
        "'redisHost' was unexpected",
    ),
    "RayJob: entryPoint instead of entrypoint": (
        lambda: _set(
            the("RayJob", "rayjob-train.yaml"),
            lambda d: d["spec"].update(entryPoint=d["spec"].pop("entrypoint")),
        ),
        "'entryPoint' was unexpected",
    ),
    "RayCronJob: a string for replicas": (
        lambda: _set(
            the("RayCronJob", "raycronjob.yaml"),
            lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0].update(
                replicas="two"
            ),
        ),
        "workerGroupSpecs.0.replicas: 'two' is not of type 'integer'",
    ),
    "NetworkPolicy: ingres instead of ingress": (
        lambda: _set(
            documents(KUBERAY / "network-policy.yaml")[0],
            lambda d: d["spec"].update(ingres=d["spec"].pop("ingress")),
        ),
        "'ingres' was unexpected",
    ),
    "CronJob: a typo in the pod spec": (
        lambda: _set(
            the("CronJob", "nightly-cronjob.yaml"),
            lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"].update(restartPolicyy="Never"),
        ),
        "'restartPolicyy' was unexpected",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_fails_and_the_error_names_the_field(case: str) -> None:
    make, expected = BROKEN[case]
    errors = schema_errors(make())
    assert errors, f"{case}: the broken copy passed"
    assert any(expected in error for error in errors), errors


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


def test_every_process_reads_the_platform_config() -> None:
    """The jobs pass `--config` with the ConfigMap's file, the Serve app gets it as `config`, and
    every Ray pod (head and workers: Serve may build the app anywhere) mounts the ConfigMap."""
    runs = [line for _, doc in all_documents() for line in command_lines(doc) if "oncall-router " in line]
    for line in runs:
        for call in re.findall(r"oncall-router(?: --\S+ \S+)* [a-z-]+", line):
            assert f"--config {CONFIG_FILE}" in call, f"{call!r} does not read the platform config"
    assert len(runs) >= 3, runs
    serve = yaml.safe_load(the("RayService", "rayservice.yaml")["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["config"] == CONFIG_FILE
    for where, doc in all_documents():
        for template in ray_pod_templates(doc):
            pod = template["spec"]
            volumes = {v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == CONFIG_MAP}
            (container,) = pod["containers"]
            mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in volumes}
            assert mounts == {str(Path(CONFIG_FILE).parent)}, f"{where}: {container['name']} lacks the config"


def test_the_platform_config_is_a_valid_production_config(tmp_path: Path) -> None:
    from pipelines.config import load_config

    config_file = tmp_path / "oncall.yaml"
    config_file.write_text(platform_config_text(), encoding="utf-8")
    config = load_config(config_file, environ={})  # an unknown key or a wrong type raises here
    assert config.registry.tracking_uri and config.registry.tracking_uri.startswith("http")
    assert config.storage.endpoint_url and config.storage.endpoint_url.startswith("http")
    for uri in (config.data.archive, config.rescore.out, config.ray.storage_path):
        assert uri and uri.startswith("s3://"), uri
    db = urlsplit(config.serve.feedback_db_url or "")
    assert db.scheme.startswith("postgresql"), db
    assert db.password is None, "the DB password belongs in the Secret (PGPASSWORD), not in the config"
    assert not config.serve.auth_tokens, "serve tokens belong in the Secret (ONCALL_SERVE_TOKENS)"


def test_secrets_come_from_kubernetes_secrets_only() -> None:
    inline_credentials = re.compile(r"\w+://[^/\s:@]+:[^/\s@]+@")  # scheme://user:password@host
    for path in MANIFESTS:
        assert not inline_credentials.search(path.read_text(encoding="utf-8")), (
            f"{path.name}: a URL with a password"
        )
    ray_containers = 0
    for where, doc in all_documents():
        for pod in pod_specs(doc):
            for container in containers(pod):
                for item in container.get("env", []):
                    if item["name"] in SECRET_ENV or SECRET_LIKE.search(item["name"]):
                        assert "value" not in item, f"{where}: {item['name']} is inline"
                        ref = item["valueFrom"]["secretKeyRef"]
                        assert ref == {"name": SECRET, "key": SECRET_ENV[item["name"]]}, (where, item)
        for template in ray_pod_templates(doc):
            (container,) = template["spec"]["containers"]
            env = {item["name"] for item in container.get("env", [])}
            needed = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD"}
            if doc["kind"] == "RayService":
                needed.add("ONCALL_SERVE_TOKENS")
            assert env >= needed, f"{where}: {container['name']} lacks {needed - env}"
            ray_containers += 1
    assert ray_containers >= 9, ray_containers
    fault_tolerance = the("RayService", "rayservice.yaml")["spec"]["rayClusterConfig"][
        "gcsFaultToleranceOptions"
    ]
    assert fault_tolerance["redisPassword"] == {
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "redis-password"}}
    }


def test_the_rayservice_survives_a_head_restart() -> None:
    """GCS fault tolerance: the GCS keeps the cluster's state in an external Redis."""
    cluster = the("RayService", "rayservice.yaml")["spec"]["rayClusterConfig"]
    fault_tolerance = cluster["gcsFaultToleranceOptions"]
    assert fault_tolerance["redisAddress"], fault_tolerance
    assert fault_tolerance.get("backend", "redis") == "redis"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no replicas on the head"
    serve = yaml.safe_load(the("RayService", "rayservice.yaml")["spec"]["serveConfigV2"])
    model = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "TicketRouterModel")
    assert model["autoscaling_config"]["min_replicas"] >= 2


def test_every_dashboard_listens_on_the_pod_network_only() -> None:
    heads = 0
    for where, doc in all_documents():
        for spec in ray_cluster_specs(doc):
            head = spec["headGroupSpec"]
            host = head["rayStartParams"].get("dashboard-host")
            assert host == "$(POD_IP)", f"{where}: dashboard-host {host!r}, not the pod IP"
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head Service exposed"
            assert not head.get("enableIngress"), where
            (container,) = head["template"]["spec"]["containers"]
            env = {item["name"]: item for item in container["env"]}
            assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, where
            assert "hostPort" not in str(container.get("ports")), where
            heads += 1
    assert heads >= 4, heads


def test_the_network_policy_opens_only_the_serve_port_from_outside() -> None:
    policies = [doc for doc in documents(KUBERAY / "network-policy.yaml") if doc["kind"] == "NetworkPolicy"]
    app = {"app.kubernetes.io/name": "oncall-router"}
    open_rules: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
    for policy in policies:
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        selected = spec["podSelector"]["matchLabels"]
        assert selected.items() >= app.items()
        for rule in spec["ingress"]:
            peers = rule.get("from")
            if not peers:
                open_rules.append((selected, rule["ports"]))
            elif all(peer.keys() == {"podSelector"} for peer in peers):
                assert all(peer["podSelector"]["matchLabels"] == app for peer in peers), rule
            else:
                # From another namespace (the operator, Prometheus): its own ports, never all of them.
                assert rule.get("ports"), f"{policy['metadata']['name']}: all ports open to {peers}"
                assert {port["port"] for port in rule["ports"]} <= {8265, 52365, 8080}, rule
    assert open_rules == [
        ({**app, "app.kubernetes.io/component": "serve"}, [{"protocol": "TCP", "port": SERVE_PORT}])
    ], open_rules
    # The policies select what they mean to: every pod of the manifests carries the app label;
    # only the RayService's pods carry the serve component.
    (serve_selector, _) = open_rules[0]
    for where, doc in all_documents():
        for template in find(
            doc, lambda node: isinstance(node.get("spec"), dict) and "containers" in node["spec"]
        ):
            labels = template.get("metadata", {}).get("labels", {})
            assert labels.items() >= app.items(), f"{where}: a pod the network policy does not cover"
            is_serve = labels.items() >= serve_selector.items()
            assert is_serve == (doc["kind"] == "RayService"), f"{where}: {labels}"


def test_every_container_requests_cpu_and_memory() -> None:
    count = 0
    for where, doc in all_documents():
        for pod in pod_specs(doc):
            for container in containers(pod):
                requests = container.get("resources", {}).get("requests", {})
                assert {"cpu", "memory"} <= requests.keys(), (
                    f"{where}: {container['name']} requests {requests}"
                )
                count += 1
    assert count >= 14, count


def test_every_image_is_the_one_placeholder() -> None:
    images: set[str] = set()
    for where, doc in all_documents():
        for pod in pod_specs(doc):
            for container in containers(pod):
                image = container["image"]
                images.add(image)
                if image in OTHER_IMAGES:
                    continue
                gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
                assert image == f"{IMAGE}:{VERSION}{'-gpu' if gpu else ''}", (
                    f"{where}: {container['name']} {image}"
                )
    assert images >= {f"{IMAGE}:{VERSION}", f"{IMAGE}:{VERSION}-gpu"}, images
