"""How a classifier directory is packaged as a run's ``model/`` artifact: an MLflow pyfunc
(models-from-code) whose artifact ``classifier`` is the directory itself."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipelines import __version__

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CLASSIFIER_ARTIFACT = "classifier"


def package_classifier(classifier_dir: Path, out: Path) -> Path:
    """Write the pyfunc model directory ``out`` around ``classifier_dir`` (copied inside as
    ``artifacts/<its name>``, hence the fixed name)."""
    if classifier_dir.name != CLASSIFIER_ARTIFACT:
        raise ValueError(
            f"the classifier directory must be named '{CLASSIFIER_ARTIFACT}', not {classifier_dir.name!r}"
        )
    mlflow.pyfunc.save_model(
        path=str(out),
        python_model=str(PYFUNC_CODE),
        artifacts={CLASSIFIER_ARTIFACT: str(classifier_dir)},
        # Given explicitly: inferring requirements imports the world (and failed on torchvision).
        pip_requirements=[f"oncall-router=={__version__}"],
    )
    return out


def classifier_in(model_root: Path) -> Path:
    """The classifier directory inside a downloaded ``model/`` artifact."""
    return model_root / "artifacts" / CLASSIFIER_ARTIFACT
