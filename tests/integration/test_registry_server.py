"""The registry against a real `mlflow server` process whose backend store is PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.artifacts import download_artifacts

from pipelines.config import OncallConfig
from pipelines.errors import ModelError
from pipelines.model.inference import TicketClassifier
from pipelines.registry.packaging import classifier_in
from pipelines.registry.promotion import promote, rollback
from pipelines.registry.tracking import MODEL_ARTIFACT, Tracker
from pipelines.registry.versions import CHAMPION, Registry
from pipelines.training.job import TrainResult
from tests.integration.mlflow_server import (
    mlflow_server,
    mlflow_store,
    postgres_url_or_skip,
    scratch_database,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")

TICKETS = pd.DataFrame(
    [
        {
            "title": "payment-gateway 在集群 sg1 出现大量 timeout",
            "service": "payment-gateway",
            "cluster": "sg1",
        },
        {"title": "Disk usage 91% on fra1-node-007", "description": "logs not rotated"},
    ]
)


@pytest.fixture(scope="module")
def server_config(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OncallConfig]:
    postgres = postgres_url_or_skip()
    folder = tmp_path_factory.mktemp("mlflow-server")
    with scratch_database(postgres) as backend, mlflow_server(backend, folder / "artifacts") as url:
        config, _ = trained_run
        yield config.model_copy(update={"registry": config.registry.model_copy(update={"tracking_uri": url})})


def copy_run_to(server: OncallConfig, source: OncallConfig, run_id: str) -> str:
    """The embedded run's model, params and metrics as a run on the server (no retraining)."""
    run = Tracker(source).get(run_id)
    with Tracker(server).run(server.registry.experiment) as copy:
        copy.params({key: run.params[key] for key in ("window.train", "window.test", "archive")})
        copy.metrics(run.metrics)
        with tempfile.TemporaryDirectory() as folder:
            model = download_artifacts(
                run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=folder, tracking_uri=source.tracking_uri
            )
            copy.artifacts(Path(model), MODEL_ARTIFACT)
    return copy.run_id


def test_register_promote_load_and_pyfunc_through_the_server(
    server_config: OncallConfig, trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    embedded, result = trained_run
    registry = Registry(server_config)
    with pytest.raises(ModelError, match=f"no alias 'champion' in {server_config.tracking_uri}"):
        registry.get(alias=CHAMPION)
    version = registry.register_run(copy_run_to(server_config, embedded, result.run_id))
    assert promote(server_config).promoted
    assert registry.get(alias=CHAMPION).version == version.version

    served = registry.load_classifier(alias=CHAMPION)
    local_model = download_artifacts(
        run_id=result.run_id,
        artifact_path=MODEL_ARTIFACT,
        dst_path=str(tmp_path),
        tracking_uri=embedded.tracking_uri,
    )
    local = TicketClassifier.from_dir(classifier_in(Path(local_model)))
    tickets = TICKETS.to_dict("records")
    assert served.predict(tickets) == local.predict(tickets)

    with mlflow_store(server_config.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{server_config.registry.model_name}@{CHAMPION}")
    frame = pyfunc.predict(TICKETS)
    assert frame["tenant"].tolist() == [p.tenant for p in local.predict(tickets)]
    assert frame["confidence"].tolist() == pytest.approx([p.confidence for p in local.predict(tickets)])

    with pytest.raises(ModelError, match="nothing to roll back to"):
        rollback(server_config)
