"""The pyfunc package of a version: shipped code, pinned requirements, signature and input
example, and the pyfunc's answers (on the micro classifier of the pre-layout fixture)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from packaging.requirements import Requirement

from pipelines.predict import TicketClassifier
from pipelines.registry.packaging import (
    CLASSIFIER_ARTIFACT,
    CORE_DISTRIBUTIONS,
    EXAMPLE_TICKET,
    OUTPUT_COLUMNS,
    package_classifier,
    pinned_requirements,
)

FIXTURE_CLASSIFIER = Path(__file__).parents[2] / "fixtures" / "pre_layout_version" / "model" / "artifacts"
TICKETS = [
    {"title": "checkout api is down", "service": "checkout-api"},
    {"title": "billing db slow", "description": "queries time out", "service": "billing-db"},
    {"title": "auth tokens rejected", "description": "401 on login"},
]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packaged")
    classifier = shutil.copytree(FIXTURE_CLASSIFIER / CLASSIFIER_ARTIFACT, root / CLASSIFIER_ARTIFACT)
    return package_classifier(classifier, root / "model")


def test_requirements_pin_the_installed_core_and_never_the_project() -> None:
    pins = [Requirement(line) for line in pinned_requirements()]
    assert [pin.name for pin in pins] == list(CORE_DISTRIBUTIONS)
    for pin in pins:
        # torch's `+cpu` build satisfies `torch==2.13.0`: the pin is installable from a public index
        assert pin.specifier.contains(version(pin.name)), (pin, version(pin.name))
        assert "+" not in str(pin.specifier)


def test_the_package_ships_the_code_requirements_signature_and_example(packaged: Path) -> None:
    assert (packaged / "code" / "pipelines" / "predict.py").is_file()
    assert not list((packaged / "code").rglob("__pycache__"))
    requirements = (packaged / "requirements.txt").read_text().split()
    assert not [line for line in requirements if "oncall-router" in line]
    assert set(pinned_requirements()) <= set(requirements)
    model = Model.load(packaged)
    inputs = {spec.name: spec.required for spec in model.signature.inputs.inputs}
    assert inputs.pop("title") is True and inputs and not any(inputs.values())
    assert model.signature.outputs.input_names() == list(OUTPUT_COLUMNS)
    assert [(p.name, p.default) for p in model.signature.params.params] == [("top_k", 3)]
    example = json.loads((packaged / "serving_input_example.json").read_text())["dataframe_split"]
    assert dict(zip(example["columns"], example["data"][0], strict=True)) == EXAMPLE_TICKET


def test_a_misnamed_classifier_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be named 'classifier'"):
        package_classifier(tmp_path / "adapter", tmp_path / "model")


def test_the_pyfunc_answers_like_the_classifier_with_its_signature(packaged: Path) -> None:
    pyfunc = mlflow.pyfunc.load_model(str(packaged))
    expected = TicketClassifier.from_dir(packaged / "artifacts" / CLASSIFIER_ARTIFACT).predict(
        TICKETS, top_k=2
    )
    frame = pyfunc.predict(pd.DataFrame(TICKETS), params={"top_k": 2})
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert frame["tenant"].tolist() == [p.tenant for p in expected]
    assert [json.loads(row) for row in frame["top_k"]] == [p.as_record()["top_k"] for p in expected]
    default = pyfunc.predict(pd.DataFrame(TICKETS[:1]))
    assert len(json.loads(default["top_k"][0])) == 3  # the signature's default


@pytest.mark.parametrize(
    ("rows", "params", "message"),
    [
        ([{"title": " "}, {"title": "db down"}], None, r"row\(s\) \[0\] have no title"),
        ([{"service": "billing-db"}], None, "missing inputs \\['title'\\]"),
        ([{"title": "db down"}], {"top_k": 0}, "top_k must be at least 1"),
    ],
)
def test_a_bad_request_is_one_clear_error(
    packaged: Path, rows: list[dict], params: dict | None, message: str
) -> None:
    pyfunc = mlflow.pyfunc.load_model(str(packaged))
    with pytest.raises(MlflowException, match=message):
        pyfunc.predict(pd.DataFrame(rows), params=params)


def test_the_shipped_code_needs_no_ray_mlflow_or_pydantic() -> None:
    """What a served version imports from ``code/pipelines``: the inference path only, so the
    pinned core requirements are enough (``pipelines.config`` would need pydantic, and so on)."""
    probe = textwrap.dedent(
        """
        import json, sys
        import pipelines.predict
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
              ("pipelines", "ray", "mlflow", "pydantic"))))
        """
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    )
    allowed = ("pipelines.predict", "pipelines.errors", "pipelines.contract", "pipelines.model")
    assert [m for m in loaded if m != "pipelines" and not m.startswith(allowed)] == []
