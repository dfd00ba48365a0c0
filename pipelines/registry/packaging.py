"""How a classifier directory is packaged as a run's ``model/`` artifact: an MLflow pyfunc
(models-from-code) whose artifact ``classifier`` is the directory itself.

The package is self-sufficient for MLflow's own tooling (``mlflow models serve``,
``mlflow models build-docker``): the ``pipelines`` package travels in ``code/`` (MLflow puts it on
``sys.path`` before loading), the requirements pin the installed versions of what
``pipelines.predict`` imports (the ``oncall-router`` distribution itself is on no index), and a
signature and an input example describe a request.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import pipelines
from pipelines.contract.columns import OPTIONAL_TEXT_COLUMNS

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CLASSIFIER_ARTIFACT = "classifier"
# Everything `import pipelines.predict` needs beyond the standard library (its import closure is
# torch, transformers, peft, tokenizers, safetensors, numpy, pandas; pyarrow backs pandas' strings).
# Their own dependencies (accelerate, huggingface_hub, ...) are left to pip's resolver.
CORE_DISTRIBUTIONS = (
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
)
# The columns of the pyfunc's answer (one row per ticket), with their MLflow types.
OUTPUT_COLUMNS = {"tenant": "string", "confidence": "double", "top_k": "string", "abstain": "boolean"}
DEFAULT_TOP_K = 3
EXAMPLE_TICKET = {
    "title": "payment-gateway p99 latency above 800ms in sg1",
    "description": "checkout requests time out since the last deploy",
    "service": "payment-gateway",
    "cluster": "sg1",
}


def pinned_requirements(distributions: tuple[str, ...] = CORE_DISTRIBUTIONS) -> list[str]:
    """``name==version`` of the installed ``distributions``, read now (at packaging time). A local
    label such as torch's ``+cpu`` is dropped: ``torch==2.13.0`` accepts any build of 2.13.0, and
    no public index serves a ``+cpu`` version."""
    return [f"{name}=={version(name).split('+')[0]}" for name in distributions]


def model_signature() -> ModelSignature:
    """Ticket columns in (strings; only ``title`` required), ranked tenants out, ``top_k`` as a
    request parameter (``{"params": {"top_k": 5}}`` over HTTP)."""
    inputs = [ColSpec("string", "title")]
    inputs += [ColSpec("string", name, required=False) for name in OPTIONAL_TEXT_COLUMNS]
    outputs = [ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS.items()]
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("top_k", "long", DEFAULT_TOP_K)]),
    )


def package_classifier(classifier_dir: Path, out: Path) -> Path:
    """Write the pyfunc model directory ``out`` around ``classifier_dir`` (copied inside as
    ``artifacts/<its name>``, hence the fixed name)."""
    if classifier_dir.name != CLASSIFIER_ARTIFACT:
        raise ValueError(
            f"the classifier directory must be named '{CLASSIFIER_ARTIFACT}', not {classifier_dir.name!r}"
        )
    with warnings.catch_warnings():
        # MLflow 3.17 compares an example's string columns with a range, which pandas 3.1 warns
        # about (Pandas4Warning) at every training run; harmless, the example is written right.
        warnings.filterwarnings("ignore", message="Operation with range is deprecated")
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(PYFUNC_CODE),
            artifacts={CLASSIFIER_ARTIFACT: str(classifier_dir)},
            code_paths=[str(Path(pipelines.__file__).parent)],
            # Given explicitly: inferring requirements imports the world (and failed on torchvision).
            pip_requirements=pinned_requirements(),
            signature=model_signature(),
            input_example=pd.DataFrame([EXAMPLE_TICKET]),
        )
    return out


def classifier_in(model_root: Path) -> Path:
    """The classifier directory inside a downloaded ``model/`` artifact."""
    return model_root / "artifacts" / CLASSIFIER_ARTIFACT
