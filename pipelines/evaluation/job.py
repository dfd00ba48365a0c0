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
import ray.data

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive
from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN, TEXT_COLUMN
from pipelines.contract.days import DayWindow
from pipelines.contract.text import TextBuilder
from pipelines.data.window import labelled_rows, read_window, unreadable_files_named, valid_labelled
from pipelines.errors import ModelError
from pipelines.evaluation.baseline import BASELINE_COLUMNS, ClassicBaseline, sample_rows
from pipelines.evaluation.calibration import Calibration, calibrate
from pipelines.evaluation.metrics import Evaluation, evaluate_scores
from pipelines.evaluation.report import write_report
from pipelines.model.artifact import LabelSet, read_classifier_descriptor
from pipelines.model.inference import TicketClassifier, softmax
from pipelines.ray_runtime import ray_session
from pipelines.registry.tracking import EVALUATION_ARTIFACT, RunLog, Tracker
from pipelines.registry.versions import Registry

log = logging.getLogger(__name__)


def score_rows(
    classifier: TicketClassifier,
    rows: pd.DataFrame,
    config: OncallConfig,
    baseline: ClassicBaseline | None = None,
) -> tuple[Evaluation, int]:
    """Evaluation of labelled rows (with a ``text`` column) whose tenant the classifier knows, at
    its own temperature and abstain threshold (and the classic ``baseline`` on the same rows),
    and the number of rows of tenants it cannot know (counted apart, not scored)."""
    labels: LabelSet = classifier.labels
    known = _known_rows(rows, labels)
    if known.empty:
        raise ModelError("no labelled tickets of tenants known to the model in the evaluation window")
    texts = known[TEXT_COLUMN].tolist()
    logits = classifier.predict_logits_texts(texts)
    true_ids = _true_ids(known, labels)
    evaluation = evaluate_scores(
        softmax(logits, classifier.temperature),
        true_ids,
        labels,
        target_accuracy=config.evaluate.target_accuracy,
        abstain_threshold=classifier.abstain_threshold,
        top_k=config.evaluate.top_k,
        confusion_tenants=config.evaluate.confusion_tenants,
        uncalibrated=softmax(logits),
    )
    evaluation.metrics["temperature"] = classifier.temperature
    if baseline is not None:
        evaluation.metrics.update(baseline.metrics(texts, true_ids, labels, config.evaluate.top_k))
    return evaluation, len(rows) - len(known)


def fit_calibration(classifier: TicketClassifier, rows: pd.DataFrame, config: OncallConfig) -> Calibration:
    """Temperature and abstain threshold of ``classifier`` fit on labelled validation rows (those
    of tenants it knows); see :func:`pipelines.evaluation.calibration.calibrate`."""
    known = _known_rows(rows, classifier.labels)
    return calibrate(
        classifier.predict_logits_texts(known[TEXT_COLUMN].tolist()),
        _true_ids(known, classifier.labels),
        target_accuracy=config.evaluate.target_accuracy,
        min_tickets=config.evaluate.min_threshold_tickets,
        fallback_threshold=config.evaluate.fallback_abstain_threshold,
    )


def train_baseline(rows: ray.data.Dataset, config: OncallConfig) -> ClassicBaseline | None:
    """The classic baseline trained on valid labelled ``rows`` (streamed, capped at
    ``evaluate.baseline_max_train_rows``); None, logged, when they hold fewer than two tenants."""
    batches = rows.select_columns(BASELINE_COLUMNS).iter_batches(batch_format="pandas")
    sample = sample_rows(batches, config.evaluate.baseline_max_train_rows)
    if sample[LABEL_COLUMN].nunique() < 2:
        log.warning("no classic baseline: the training days hold fewer than two tenants")
        return None
    return ClassicBaseline.fit(sample, seed=config.train.seed)


def baseline_for_window(
    config: OncallConfig, archive_uri: str, builder: TextBuilder, window: DayWindow | None
) -> ClassicBaseline | None:
    """The classic baseline trained on an archive's ``window`` (a classifier's training days,
    its text built by the classifier's ``builder``); None, logged, when no window is recorded
    or the archive holds none of its days (e.g. a golden set)."""
    if window is None:
        log.warning("no classic baseline: the classifier records no training days")
        return None
    if not Archive(archive_uri, config.object_store).partitions(window.first, window.last):
        log.warning("no classic baseline: %s holds none of the training days %s", archive_uri, window)
        return None
    with unreadable_files_named(archive_uri, window.first, window.last, config.object_store):
        rows = read_window(archive_uri, builder, window.first, window.last, config.object_store)
        return train_baseline(valid_labelled(rows), config)


def _known_rows(rows: pd.DataFrame, labels: LabelSet) -> pd.DataFrame:
    return rows[rows[LABEL_COLUMN].isin(set(labels.tenants))]


def _true_ids(rows: pd.DataFrame, labels: LabelSet) -> np.ndarray:
    return rows[LABEL_COLUMN].map(labels.id_of()).to_numpy(dtype=np.int64)


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
        train_days = _recorded_days(model_dir, "train")
        if since is None and until is None:
            test_days = _recorded_days(model_dir, "test")
            if test_days is None:
                raise ModelError(f"run {run_id}'s classifier records no test days: give --since/--until")
            since, until = test_days.first, test_days.last
    archive = archive_uri or tracker.get(run_id).params.get("archive") or config.archive_uri
    # Data, the classic baseline on the run's training days, and scores.
    with ray_session(config):
        rows = labelled_rows(archive, classifier.text_builder, since, until, config.object_store)
        baseline = baseline_for_window(config, archive, classifier.text_builder, train_days)
    evaluation, unseen = score_rows(classifier, rows, config, baseline)
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


def _recorded_days(model_dir: Path, split: str) -> DayWindow | None:
    """The first and last ``split`` day ("train", "test") the classifier directory records."""
    recorded = read_classifier_descriptor(model_dir).get("window", {}).get(split)
    return DayWindow(*(dt.date.fromisoformat(day) for day in recorded)) if recorded else None
