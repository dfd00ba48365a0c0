"""Helpers of the registry and jobs tests: a config on a fresh embedded store, the console script
as a real process, an MLflow server address where nothing listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from pipelines.config import OncallConfig, load_config

CLI = [sys.executable, "-c", "from pipelines.cli import main; main()"]
# MLflow retries a refused connection for minutes by default: the tests want the first answer.
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def config_at(data_dir: Path, **overrides: object) -> OncallConfig:
    return load_config(environ={}, overrides={"data_dir": data_dir, **overrides})


def closed_port_uri(credentials: str = "") -> str:
    """An http:// tracking URI on 127.0.0.1 where nothing listens (the port was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://{credentials}127.0.0.1:{port}"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env={**environ, **NO_RETRIES, **(env or {})},
        timeout=300,
    )


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error: ")]
