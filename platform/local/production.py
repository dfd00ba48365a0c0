"""The production shape on one machine, every server on loopback (``make prod-up`` / ``prod-down``).

What it starts, each in its own process group (``<dir>/logs/`` has their output):

- a Ray cluster started with ``ray start``: a head and two worker nodes, each with its own
  ``--temp-dir``, ``--num-cpus`` and a custom resource named after it (``head``, ``worker1``,
  ``worker2``; the workers also carry ``trainer``, where training runs), token auth on (Ray 2.60's
  default for ``ray start --head``) with the token in ``<dir>/ray/auth_token``;
- S3: ``moto_server`` with the bucket ``oncall`` (archive, scored table, Ray Train checkpoints,
  MLflow artifacts);
- ``mlflow server`` on a PostgreSQL database (``oncall_prod`` unless told otherwise), its artifacts in
  ``s3://oncall/mlartifacts`` served through the tracking server, so clients need no S3 access;
  the feedback table and the scored table's catalog live in the same database.

It writes the platform config that points every command at them (``<dir>/prod.yaml``) and the
environment to source (``<dir>/prod.env``): the cluster's addresses, the token, dummy S3
credentials and ``ONCALL_CONFIG``. The nodes start with that environment, so jobs, Train workers
and Serve replicas inherit it. Then, as a platform team would::

    source .oncall-prod/prod.env
    ray job submit -- oncall-router train --until 2026-10-06
    serve deploy platform/serve/serve_config.yaml

Usage: ``python platform/local/production.py up|down|status|kill-node NODE|start-node NODE``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger("production")

BUCKET = "oncall"
NODES = ("head", "worker1", "worker2")
# Logical CPUs (more than the 2 physical cores): a worker node holds a Train worker next to up to
# two model replicas and the ingress, wherever Serve put them after a node was replaced.
NODE_CPUS = {"head": 2, "worker1": 4, "worker2": 4}
REGION = "us-east-1"
# moto accepts any credentials; real ones never belong in files or logs.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "oncall-local", "AWS_SECRET_ACCESS_KEY": "oncall-local"}
READY_TIMEOUT_S = 120.0
# Ray's sockets live under each node's temp dir: Unix socket paths have at most 107 bytes.
MAX_DIR_CHARS = 30


class ProductionError(Exception):
    """Something the user can fix: named in one line, no traceback."""


@dataclass
class State:
    """What ``up`` started, in ``<dir>/state.json``: ``down`` and ``kill-node`` read it."""

    directory: str
    database: str
    postgres_url: str
    ports: dict[str, int] = field(default_factory=dict)
    process_groups: dict[str, int] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.directory) / "state.json"

    def save(self) -> None:
        self.path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> State:
        path = directory / "state.json"
        if not path.is_file():
            raise ProductionError(f"{path} does not exist: nothing was started with `up --dir {directory}`")
        return cls(**json.loads(path.read_text()))

    @property
    def database_url(self) -> str:
        return self.postgres_url.rsplit("/", 1)[0] + f"/{self.database}"


# --- up ------------------------------------------------------------------------------------------


def up(directory: Path, postgres_url: str, database: str, serve_port: int) -> State:
    """Start everything, write prod.yaml and prod.env; returns what was started."""
    directory = directory.resolve()
    if len(str(directory)) > MAX_DIR_CHARS:
        raise ProductionError(
            f"{directory} is too long a path (Ray's socket paths): use at most {MAX_DIR_CHARS} characters"
        )
    if (directory / "state.json").exists():
        raise ProductionError(f"{directory} holds a running environment: run `down` first")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    state = State(str(directory), database, postgres_url)
    state.ports = {name: free_port() for name in ("s3", "mlflow", "gcs", "dashboard")}
    state.ports["serve"] = serve_port
    state.save()
    try:
        _create_database(postgres_url, database)
        environment = _write_environment(state)
        _start_s3(state, environment)
        _start_mlflow(state, environment)
        for node in NODES:
            start_node(state, node, environment)
        _wait_for_nodes(state, environment, len(NODES))
    except BaseException:
        down(directory, purge=False)
        raise
    log.info("ready: `source %s` and submit jobs (README, Production)", directory / "prod.env")
    return state


def _create_database(postgres_url: str, database: str) -> None:
    import psycopg  # the project's PostgreSQL driver

    try:
        with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{database}"')
    except psycopg.OperationalError as exc:
        raise ProductionError(f"cannot reach PostgreSQL at {postgres_url}: {exc}".strip()) from None


def _drop_database(postgres_url: str, database: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _write_environment(state: State) -> dict[str, str]:
    """prod.yaml (the platform config) and prod.env; returns the environment of every process."""
    directory = Path(state.directory)
    s3 = f"http://127.0.0.1:{state.ports['s3']}"
    token_path = directory / "ray" / "auth_token"
    token_path.parent.mkdir(parents=True, exist_ok=True)
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    config = {
        "data_dir": str(directory / "data"),
        "data": {"archive": f"s3://{BUCKET}/archive"},
        "storage": {"endpoint_url": s3, "region": REGION},
        "registry": {"tracking_uri": f"http://127.0.0.1:{state.ports['mlflow']}"},
        "serve": {"feedback_db_url": state.database_url, "port": state.ports["serve"]},
        "rescore": {"out": f"s3://{BUCKET}/scored", "catalog_uri": state.database_url},
        "ray": {"storage_path": f"s3://{BUCKET}/ray"},
        "train": {
            "workers": 2,
            "cpus_per_worker": 1,
            "placement_strategy": "STRICT_SPREAD",
            "worker_resources": {"trainer": 1},
        },
        "logging": {"ray_output": "files"},
    }
    (directory / "prod.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    environment = {
        "ONCALL_CONFIG": str(directory / "prod.yaml"),
        "RAY_ADDRESS": f"127.0.0.1:{state.ports['gcs']}",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{state.ports['dashboard']}",  # ray job submit
        "RAY_DASHBOARD_ADDRESS": f"http://127.0.0.1:{state.ports['dashboard']}",  # serve deploy
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "AWS_ENDPOINT_URL": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_DEFAULT_REGION": REGION,
        **DUMMY_CREDENTIALS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    lines = [f"export {name}={value}" for name, value in environment.items() if name != "PATH"]
    lines.append(f'export PATH="{Path(sys.executable).parent}:$PATH"')
    (directory / "prod.env").write_text("\n".join(lines) + "\n")
    return environment


def _spawn(state: State, name: str, command: list[str], environment: dict[str, str]) -> None:
    """Start ``command`` in a new process group (so ``down`` stops it and its children)."""
    logs = Path(state.directory) / "logs" / f"{name}.log"
    with logs.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**_own_environment(), **environment},
            start_new_session=True,
        )
    state.process_groups[name] = process.pid
    state.save()
    log.info("started %s (process group %d, output in %s)", name, process.pid, logs)


def _start_s3(state: State, environment: dict[str, str]) -> None:
    port = state.ports["s3"]
    _spawn(state, "s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], environment)
    _wait_http(f"http://127.0.0.1:{port}/moto-api/", "S3 (moto)")
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=environment["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)


def _start_mlflow(state: State, environment: dict[str, str]) -> None:
    port = state.ports["mlflow"]
    command = [
        _bin("mlflow"), "server",
        "--backend-store-uri", state.database_url,
        "--artifacts-destination", f"s3://{BUCKET}/mlartifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    _spawn(state, "mlflow", command, environment)
    _wait_http(f"http://127.0.0.1:{port}/health", "mlflow server")


def start_node(state: State, node: str, environment: dict[str, str] | None = None) -> None:
    """``ray start --block`` for one node (again after ``kill-node``: a replaced pod)."""
    environment = environment or read_environment(Path(state.directory))
    directory = Path(state.directory) / "ray" / node
    directory.mkdir(parents=True, exist_ok=True)
    resources = {node: 1, **({"trainer": 1} if node != "head" else {})}
    ports = {
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    command = [
        _bin("ray"), "start", "--block", "--disable-usage-stats",
        "--num-cpus", str(NODE_CPUS[node]), "--resources", json.dumps(resources),
        "--temp-dir", str(directory),
        *(item for option, port in ports.items() for item in (option, str(port))),
    ]  # fmt: skip
    if node == "head":
        command += [
            "--head", "--port", str(state.ports["gcs"]), "--node-ip-address", "127.0.0.1",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(state.ports["dashboard"]),
        ]  # fmt: skip
    else:
        command += ["--address", environment["RAY_ADDRESS"], "--node-ip-address", "127.0.0.1"]
    _spawn(state, node, command, environment)
    if node == "head":
        _wait_http(f"{environment['RAY_API_SERVER_ADDRESS']}/api/version", "Ray dashboard")


def _wait_for_nodes(state: State, environment: dict[str, str], count: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if len(alive_nodes(environment)) >= count:
            return
        time.sleep(2)
    raise ProductionError(f"the Ray cluster did not reach {count} nodes: see {state.directory}/logs")


def alive_nodes(environment: dict[str, str]) -> dict[str, str]:
    """``{node name: Ray node id}`` of the alive nodes (by their custom resource)."""
    result = subprocess.run(
        [_bin("ray"), "list", "nodes", "--format", "json", "--detail", "--limit", "100"],
        env={**_own_environment(), **environment, "RAY_ADDRESS": environment["RAY_API_SERVER_ADDRESS"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        listed = json.loads(result.stdout) if result.returncode == 0 else []
    except json.JSONDecodeError:
        log.debug("`ray list nodes` printed no JSON: %s", result.stdout[-500:])
        listed = []
    nodes = {}
    for node in listed:
        if node.get("state") != "ALIVE":
            continue
        name = next((n for n in NODES if n in (node.get("resources_total") or {})), None)
        if name:
            nodes[name] = node["node_id"]
    return nodes


# --- down, kill-node -----------------------------------------------------------------------------


def kill_node(directory: Path, node: str) -> None:
    """SIGKILL a node's process group (its raylet and its workers): a lost machine."""
    state = State.load(directory.resolve())
    group = state.process_groups.get(node)
    if group is None:
        raise ProductionError(f"no node {node!r}: nodes are {', '.join(NODES)}")
    _kill_group(group, signal.SIGKILL)
    log.info("killed node %s (process group %d)", node, group)


def down(directory: Path, purge: bool) -> None:
    """Stop every process group (SIGTERM, then SIGKILL); with ``purge`` also drop the database and
    delete the directory."""
    directory = directory.resolve()
    try:
        state = State.load(directory)
    except ProductionError:
        log.info("nothing is running under %s", directory)
        return
    for name, group in reversed(list(state.process_groups.items())):
        _kill_group(group, signal.SIGTERM)
        log.info("stopping %s (process group %d)", name, group)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(g) for g in state.process_groups.values()):
        time.sleep(0.5)
    for group in state.process_groups.values():
        _kill_group(group, signal.SIGKILL)
    state.path.unlink()
    if purge:
        _drop_database(state.postgres_url, state.database)
        shutil.rmtree(directory, ignore_errors=True)
        log.info("dropped database %s and deleted %s", state.database, directory)


def _kill_group(group: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# --- helpers -------------------------------------------------------------------------------------


def read_environment(directory: Path) -> dict[str, str]:
    """prod.env as a mapping (what `source` would export)."""
    environment = {}
    for line in (directory / "prod.env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name != "PATH":
            environment[name] = value
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return environment


def _own_environment() -> dict[str, str]:
    """The caller's environment without its Ray and oncall settings: a RAY_ADDRESS or RAY_*
    switch of another Ray (a test session's, a user's shell) must not reach these processes."""
    return {name: value for name, value in os.environ.items() if not name.startswith(("RAY_", "ONCALL_"))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the project's venv)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ProductionError(f"{path} is missing: run `make venv` (it installs the dev extras)")
    return str(path)


def _wait_http(url: str, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.5)
    raise ProductionError(f"{what} did not answer at {url} within {READY_TIMEOUT_S:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".oncall-prod"), help="State, config and logs.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="Start the cluster, S3 and the MLflow server.")
    start.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    start.add_argument("--database", default="oncall_prod", help="Created if missing.")
    start.add_argument("--serve-port", type=int, default=8000, help="serve_config.yaml's port.")
    stop = commands.add_parser("down", help="Stop everything that `up` started.")
    stop.add_argument("--purge", action="store_true", help="Also drop the database and delete --dir.")
    commands.add_parser("status", help="Alive Ray nodes.")
    for verb in ("kill-node", "start-node"):
        commands.add_parser(verb, help=f"{verb.split('-')[0].title()} one node.").add_argument(
            "node", choices=NODES
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "up":
            up(args.dir, args.postgres_url, args.database, args.serve_port)
        elif args.command == "down":
            down(args.dir, args.purge)
        elif args.command == "status":
            print(json.dumps(alive_nodes(read_environment(args.dir.resolve())), indent=2))  # noqa: T201
        elif args.command == "kill-node":
            kill_node(args.dir, args.node)
        else:
            state = State.load(args.dir.resolve())
            start_node(state, args.node)
    except ProductionError as exc:
        log.error("error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
