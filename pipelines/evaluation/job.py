"""``evaluate``: score a trained run's classifier on labelled tickets and log the report.

Also the evaluation step of ``train`` (same scoring, same report), so both agree.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import OncallConfig
from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN, TEXT_COLUMN
from pipelines.data.window import labelled_rows
from pipelines.errors import ModelError
from pipelines.evaluation.metrics import Evaluation, evaluate_scores
from pipelines.evaluation.report import write_report
from pipelines.model.artifact import LabelSet, read_classifier_descriptor
from pipelines.model.inference import TicketClassifier
from pipelines.ray_runtime import ray_session
from pipelines.registry.tracking import EVALUATION_ARTIFACT, RunLog, Tracker
from pipelines.registry.versions import Registry


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


def log_evaluation(run: RunLog, evaluation: Evaluation, prefix: str, artifact_path: str) -> None:
    """Metrics as ``<prefix>_<name>``; CSVs, plots and metrics.json under ``artifact_path``."""
    run.metrics({f"{prefix}_{name}": value for name, value in evaluation.metrics.items()})
    with tempfile.TemporaryDirectory() as folder:
        write_report(evaluation, Path(folder))
        (Path(folder) / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
        run.artifacts(Path(folder), artifact_path)


def evaluate_run(
    config: OncallConfig,
    run_id: str,
    archive_uri: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """Evaluate run ``run_id``'s classifier on a window (default: the run's own test days)."""
    tracker = Tracker(config)
    # Model: the run's classifier, and its test days unless a window is given.
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Registry(config, tracker.client).download_run_model(run_id, Path(folder))
        classifier = TicketClassifier.from_dir(model_dir)
        if since is None and until is None:
            since, until = _test_days(model_dir)
    archive = archive_uri or tracker.get(run_id).params.get("archive") or config.archive_uri
    # Data and scores.
    with ray_session(config):
        rows = labelled_rows(archive, classifier.text_builder, since, until, config.object_store)
    evaluation, unseen = score_rows(classifier, rows, config)
    # Report, into the run.
    window = f"{since or 'start'}_{until or 'end'}"
    log_evaluation(tracker.log_to(run_id), evaluation, "eval", f"{EVALUATION_ARTIFACT}/{window}")
    details = {
        "archive": archive,
        "since": since,
        "until": until,
        "unseen_tenant_rows": unseen,
        "days": sorted(rows[DAY_COLUMN].unique()),
    }
    return evaluation, details


def _test_days(model_dir: Path) -> tuple[dt.date, dt.date]:
    """The first and last test day the classifier directory records."""
    first, last = read_classifier_descriptor(model_dir)["window"]["test"]
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last)
