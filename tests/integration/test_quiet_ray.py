"""Ray's worker output stays out of the console (in the session's log files under the data dir),
unless ``logging.ray_output: console`` asks for it. Each case starts its own local Ray in a
subprocess, as a command would (the suite's shared Ray is already initialised and would be reused)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MARKERS = ("WORKER-STDOUT-MARKER", "WORKER-STDERR-MARKER")
SCRIPT = """
import sys, time
import ray
from pipelines.config import load_config
from pipelines.logs import setup_logging
from pipelines.ray_runtime import ray_session

config = load_config(environ={}, overrides={"data_dir": sys.argv[1], "logging.ray_output": sys.argv[2]})
setup_logging(config.logging)

@ray.remote(num_cpus=0.1)
def noisy() -> int:
    print("WORKER-STDOUT-MARKER", flush=True)
    print("WORKER-STDERR-MARKER", file=sys.stderr, flush=True)
    return 7

with ray_session(config):
    assert ray.get(noisy.remote()) == 7
    time.sleep(3)  # Ray's log monitor forwards worker output within about a second
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short path: Ray's socket paths under <data_dir>/ray/sessions must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="oq", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_task(data_dir: Path, ray_output: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONCALL_", "RAY_ADDRESS"))}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data_dir), ray_output],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def logged_files(data_dir: Path) -> str:
    logs = data_dir / "ray" / "sessions"
    return "".join(p.read_text(errors="replace") for p in logs.glob("session_*/logs/**/*") if p.is_file())


def test_worker_output_goes_to_the_session_logs_under_the_data_dir_not_the_console(data_dir: Path) -> None:
    done = run_task(data_dir, "files")
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert not [marker for marker in MARKERS if marker in console], console
    assert all(marker in logged_files(data_dir) for marker in MARKERS)
    where = [line for line in done.stderr.splitlines() if "Ray's output (its workers' too)" in line]
    assert len(where) == 1 and f"{data_dir}/ray/sessions/session_" in where[0], done.stderr
    assert "Started a local Ray instance" not in console  # Ray's INFO lines stay in its files


def test_console_mode_forwards_worker_output_as_ray_does(data_dir: Path) -> None:
    done = run_task(data_dir, "console")
    assert done.returncode == 0, done.stderr
    assert all(marker in done.stdout + done.stderr for marker in MARKERS), done.stdout + done.stderr
