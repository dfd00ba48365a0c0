"""A registered version served by MLflow's own tooling: ``mlflow models serve -m models:/…
--env-manager local`` answers ``/invocations`` with the same ranked tenants as TicketClassifier.

The server runs outside the repository (cwd is a temporary directory) with the installed
``pipelines`` hidden: a ``sitecustomize`` on its ``PYTHONPATH`` refuses to import the top-level
``pipelines`` package from anywhere but a model's ``code/`` directory and records where it came
from. The venv has the project installed (editable), which would otherwise mask a version that
does not ship its code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipelines.config import OncallConfig
from pipelines.registry.versions import Registry
from pipelines.training.job import TrainResult
from tests.integration.mlflow_server import free_port, wait_until_answering
from tests.integration.serving import archive_tickets

STARTUP_TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[2]
SHIPPED_ONLY = textwrap.dedent(
    """
    import importlib.machinery
    import os
    import sys


    class ShippedOnly:
        \"\"\"`pipelines` only from a model's code/ directory (the installed one stays hidden).\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name != "pipelines":
                return None
            shipped = [p for p in sys.path if os.path.basename(p.rstrip("/")) == "code"]
            spec = importlib.machinery.PathFinder.find_spec(name, shipped)
            if spec is None:
                raise ModuleNotFoundError("pipelines is not shipped with the model", name=name)
            with open(os.environ["SHIPPED_CODE_LOG"], "a") as log:
                log.write(spec.origin + "\\n")
            return spec


    sys.meta_path.insert(0, ShippedOnly())
    """
)


def server_environment(tmp_path: Path, tracking_uri: str) -> dict[str, str]:
    """The caller's environment, but ``PYTHONPATH`` only the hiding ``sitecustomize`` and the
    venv's ``bin`` first on ``PATH`` (``mlflow models serve`` execs ``uvicorn`` by name)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(SHIPPED_ONLY)
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return {
        **environment,
        "PYTHONPATH": str(hide),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SHIPPED_CODE_LOG": str(tmp_path / "shipped_code.log"),
    }


@contextmanager
def mlflow_models_serve(model_uri: str, tmp_path: Path, tracking_uri: str) -> Iterator[str]:
    """``mlflow models serve`` on 127.0.0.1 until ``/ping`` answers; its process group is always
    terminated (the CLI execs ``uvicorn`` in a child)."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    log = tmp_path / "mlflow-models-serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=server_environment(tmp_path, tracking_uri),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/ping", process, log, STARTUP_TIMEOUT_S)
        yield url
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def invocations(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_like_the_ticket_classifier(
    trained_run: tuple[OncallConfig, TrainResult], small_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    config, result = trained_run
    tickets = archive_tickets(small_archive[0], 8)
    tickets += [{"title": "用户反馈 /checkout/confirm 打不开"}, {"title": "disk full", "service": None}]
    expected = Registry(config).load_classifier(version=result.version).predict(tickets, top_k=3)
    model_uri = f"models:/{config.registry.model_name}/{result.version}"

    with mlflow_models_serve(model_uri, tmp_path, config.tracking_uri) as url:
        status, answer = invocations(url, {"dataframe_records": tickets, "params": {"top_k": 3}})
        bad_status, bad_answer = invocations(url, {"dataframe_records": [{"title": " "}]})

    assert status == 200, answer
    rows = answer["predictions"]
    assert [row["tenant"] for row in rows] == [p.tenant for p in expected]
    served_top_k = [json.loads(row["top_k"]) for row in rows]
    assert [[e["tenant"] for e in k] for k in served_top_k] == [[t for t, _ in p.top_k] for p in expected]
    assert [e["score"] for k in served_top_k for e in k] == pytest.approx(
        [s for p in expected for _, s in p.top_k], abs=1e-5
    )
    assert [row["abstain"] for row in rows] == [p.abstain for p in expected]
    assert bad_status == 400 and "no title" in bad_answer["message"]
    # The server imported the version's own copy of `pipelines`, not the repository's.
    origins = (tmp_path / "shipped_code.log").read_text().split()
    assert origins and all(Path(o).parts[-3:] == ("code", "pipelines", "__init__.py") for o in origins)
    assert not [o for o in origins if Path(o).is_relative_to(REPO)]
