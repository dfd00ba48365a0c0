"""MLflow tracking (runs, params, metrics, artifacts). The registry lives in ``registry``."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines.config import OncallConfig

log = logging.getLogger(__name__)

# Artifact paths of a training run: the classifier directory and its evaluation report.
MODEL_ARTIFACT = "model"
EVALUATION_ARTIFACT = "evaluation"


def tracking_client(config: OncallConfig) -> MlflowClient:
    if config.tracking_uri.startswith("sqlite:///"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


def ensure_experiment(client: MlflowClient, config: OncallConfig, name: str) -> str:
    """The experiment's id, created on first use. With an embedded store its artifacts go
    under ``<data_dir>/mlartifacts`` (a server decides for itself)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not config.tracking_uri.startswith(("http://", "https://", "databricks")):
        location = (Path(config.artifacts_dir).resolve() / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten_params(prefix: str, values: dict[str, object]) -> dict[str, str]:
    """Nested config → MLflow params (``train.lr``), values as strings within MLflow's limit."""
    params: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            params.update(flatten_params(name, value))
        else:
            params[name] = str(value)[:6000]
    return params
