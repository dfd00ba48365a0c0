"""The notebooks in notebooks/ run end to end on the session's small archive and trained run, each
in a fresh kernel configured through environment variables only, and are committed stripped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pipelines.config import OncallConfig
from pipelines.data.feedback import FeedbackStore
from pipelines.registry.versions import CHAMPION, Registry
from pipelines.training.job import TrainResult
from tests.integration.serving import deployed, serving_config

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
MODEL_NAME = "notebooks"
TOKEN = "notebook-token-0123456789"
TICKETS = 8


@pytest.fixture(scope="module")
def notebook_config(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path_factory: pytest.TempPathFactory
) -> OncallConfig:
    """The trained run registered as version 1 of its own model, alias champion."""
    trained, result = trained_run
    feedback_db = tmp_path_factory.mktemp("notebook-feedback") / "feedback.db"
    config = serving_config(trained, MODEL_NAME, f"sqlite:///{feedback_db}", **{"serve.auth_tokens": [TOKEN]})
    Registry(config).register_run(result.run_id, alias=CHAMPION)
    return config


@pytest.fixture
def notebook_env(
    notebook_config: OncallConfig, small_archive: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> Iterator[OncallConfig]:
    """What a user sets: the kernel inherits this process's environment."""
    monkeypatch.setenv("ONCALL_DATA_DIR", str(notebook_config.data_dir))
    monkeypatch.setenv("ONCALL_REGISTRY__MODEL_NAME", MODEL_NAME)
    monkeypatch.setenv("ONCALL_NOTEBOOK_ARCHIVE", str(small_archive[0]))
    monkeypatch.setenv("ONCALL_NOTEBOOK_ALIAS", CHAMPION)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the plots
    yield notebook_config


def execute(name: str) -> tuple[str, int]:
    """Run a notebook in a fresh kernel (cwd: the repository); its stdout and number of plots."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    stdout = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    plots = sum("image/png" in o.get("data", {}) for o in outputs)
    return stdout, plots


def test_tickets_notebook_finds_the_planted_drift(
    notebook_env: OncallConfig, small_archive: tuple[Path, dict]
) -> None:
    manifest = small_archive[1]
    stdout, plots = execute("01_tickets.ipynb")
    moves = len(manifest["ownership_moves"])
    assert f"summary: {manifest['tickets']} tickets" in stdout, stdout
    assert f"ownership moves found: {moves}" in stdout, stdout
    assert f"manifest: {moves} moves planted, {moves} found here" in stdout, stdout
    new_tenants = len(manifest["new_tenants"])
    assert f"{new_tenants} found here" in stdout, stdout
    assert plots >= 4


def test_model_report_reproduces_the_registered_test_metrics(notebook_env: OncallConfig) -> None:
    stdout, plots = execute("02_model_report.ipynb")
    ref = Registry(notebook_env).get(alias=CHAMPION)
    assert f"model: {MODEL_NAME} version {ref.version} (@{CHAMPION})" in stdout, stdout
    found = re.search(r"top-1 ([0-9.]+) \(registered test_top1 ([0-9.]+)\)", stdout)
    assert found, stdout
    assert float(found.group(1)) == pytest.approx(float(found.group(2)), abs=0.005)
    assert re.search(r"abstain threshold [0-9.]+: [0-9.]+% of test tickets routed", stdout), stdout
    assert plots >= 3


@pytest.mark.usefixtures("ray_cluster")  # Serve runs on the session's Ray
def test_route_client_notebook_http_and_pyfunc_agree(
    notebook_env: OncallConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = notebook_env
    with deployed(config) as url:
        monkeypatch.setenv("ONCALL_ROUTER_URL", url)
        monkeypatch.setenv("ONCALL_SERVE_TOKENS", TOKEN)
        monkeypatch.setenv("ONCALL_NOTEBOOK_TICKETS", str(TICKETS))
        stdout, _ = execute("03_route_client.ipynb")
    version = Registry(config).get(alias=CHAMPION).version
    assert f"agreement: {TICKETS}/{TICKETS} tickets routed to the same tenant" in stdout, stdout
    assert f"endpoint version {version}, registry @{CHAMPION} version {version}" in stdout, stdout
    found = re.search(r"feedback stored: True \((\S+) → (\S+)\)", stdout)
    assert found, stdout
    assert FeedbackStore(config.feedback_db_url).get(found.group(1)).tenant == found.group(2)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name)
def test_committed_notebooks_are_stripped(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code), (
        f"{path.name} has outputs: run python notebooks/strip_outputs.py"
    )
    assert set(notebook.metadata) <= {"kernelspec"}, "run python notebooks/strip_outputs.py"
    assert "os.environ" in "".join(code[0].source), "the first code cell reads the parameters"
