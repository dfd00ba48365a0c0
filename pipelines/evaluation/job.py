"""``evaluate``: score a trained run's classifier on labelled tickets and log the report.

Also the evaluation step of ``train`` (same scoring, same report), so both agree.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from pipelines.config import OncallConfig
from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN, REJECT_REASON_COLUMN, TEXT_COLUMN
from pipelines.contract.text import TextBuilder
from pipelines.data.window import read_window
from pipelines.errors import ModelError
from pipelines.evaluation.metrics import Evaluation, evaluate_scores
from pipelines.evaluation.report import write_report
from pipelines.jobs.ray_runtime import ray_session
from pipelines.model.artifact import LabelSet, read_classifier_descriptor
from pipelines.model.inference import TicketClassifier
from pipelines.registry.packaging import classifier_in
from pipelines.registry.tracking import EVALUATION_ARTIFACT, MODEL_ARTIFACT, tracking_client

log = logging.getLogger(__name__)


def score_rows(
    classifier: TicketClassifier, rows: pd.DataFrame, config: OncallConfig
) -> tuple[Evaluation, int]:
    """Evaluation of labelled rows (with a ``text`` column) whose tenant the classifier knows,
    and the number of rows of tenants it cannot know (counted apart, not scored)."""
    labels: LabelSet = classifier.labels
    known = rows[rows[LABEL_COLUMN].isin(set(labels.tenants))]
    if known.empty:
        raise ModelError("no labelled tickets of tenants known to the model in the evaluation window")
    probabilities = classifier.predict_proba_texts(known[TEXT_COLUMN].tolist())
    true_ids = known[LABEL_COLUMN].map(labels.id_of()).to_numpy(dtype=np.int64)
    evaluation = evaluate_scores(
        probabilities,
        true_ids,
        labels,
        target_accuracy=config.evaluate.target_accuracy,
        top_k=config.evaluate.top_k,
        confusion_tenants=config.evaluate.confusion_tenants,
    )
    return evaluation, len(rows) - len(known)


def log_evaluation(
    client: MlflowClient, run_id: str, evaluation: Evaluation, prefix: str, artifact_path: str
) -> None:
    """Metrics as ``<prefix>_<name>``; CSVs, plots and metrics.json under ``artifact_path``."""
    for name, value in evaluation.metrics.items():
        client.log_metric(run_id, f"{prefix}_{name}", float(value))
    with tempfile.TemporaryDirectory() as folder:
        write_report(evaluation, Path(folder))
        (Path(folder) / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
        client.log_artifacts(run_id, folder, artifact_path)


def labelled_rows(
    archive_uri: str, builder: TextBuilder, since: dt.date | None, until: dt.date | None
) -> pd.DataFrame:
    """Valid, labelled tickets of a window as model text, on the driver (keep windows small).
    ``builder`` must be the classifier's own, so the text matches what it was trained on."""
    prepared = read_window(archive_uri, builder, since, until)
    return prepared.filter(
        lambda row: row[REJECT_REASON_COLUMN] is None and row[LABEL_COLUMN] is not None
    ).to_pandas()


def evaluate_run(
    config: OncallConfig,
    run_id: str,
    archive_uri: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """Evaluate run ``run_id``'s classifier on a window (default: the run's own test days)."""
    client = tracking_client(config)
    with tempfile.TemporaryDirectory() as folder:
        try:
            model_dir = classifier_in(
                Path(
                    download_artifacts(
                        run_id=run_id,
                        artifact_path=MODEL_ARTIFACT,
                        dst_path=folder,
                        tracking_uri=config.tracking_uri,
                    )
                )
            )
        except Exception as exc:  # MLflow raises several types for a missing run or artifact
            raise ModelError(
                f"run {run_id} has no '{MODEL_ARTIFACT}' artifact in {config.tracking_uri}: {exc}"
            ) from None
        descriptor = read_classifier_descriptor(model_dir)
        if since is None and until is None:
            since, until = (dt.date.fromisoformat(day) for day in descriptor["window"]["test"])
        archive = archive_uri or client.get_run(run_id).data.params.get("archive") or config.archive_uri
        classifier = TicketClassifier.from_dir(model_dir)
        with ray_session():
            rows = labelled_rows(archive, classifier.text_builder, since, until)
        evaluation, unseen = score_rows(classifier, rows, config)
    window = f"{since or 'start'}_{until or 'end'}"
    log_evaluation(client, run_id, evaluation, "eval", f"{EVALUATION_ARTIFACT}/{window}")
    details = {
        "archive": archive,
        "since": since,
        "until": until,
        "unseen_tenant_rows": unseen,
        "days": sorted(rows[DAY_COLUMN].unique()),
    }
    return evaluation, details
