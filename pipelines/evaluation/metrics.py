"""Evaluation of a classifier's scores: ranking, per-tenant quality, calibration, coverage.

Pure numpy/pandas on (probabilities, true ids). The abstain threshold (below it a ticket goes
to human triage) is chosen on the validation days (:func:`fit_abstain_threshold`, called by
:mod:`pipelines.evaluation.calibration`) and only measured here: coverage and accuracy of the
tickets it routes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from pipelines.model.artifact import LabelSet

CALIBRATION_BINS = 15


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_tenant: pd.DataFrame  # tenant, support, precision, recall, f1
    coverage: pd.DataFrame  # threshold, coverage, accuracy (most confident first)
    reliability: pd.DataFrame  # bin, confidence, accuracy, count
    confusion: pd.DataFrame  # counts among the most frequent tenants (rows: true, columns: predicted)
    # The same scores before temperature scaling (None when not given)
    reliability_uncalibrated: pd.DataFrame | None = None


def evaluate_scores(
    probabilities: np.ndarray,
    true_ids: np.ndarray,
    labels: LabelSet,
    *,
    target_accuracy: float,
    abstain_threshold: float,
    top_k: int = 3,
    confusion_tenants: int = 20,
    uncalibrated: np.ndarray | None = None,
) -> Evaluation:
    """``probabilities``: (n, classes), rows summing to 1; ``true_ids``: (n,) class ids;
    ``abstain_threshold``: the classifier's own (fit elsewhere), measured here against
    ``target_accuracy``; ``uncalibrated``: the probabilities before temperature scaling, for
    ``ece_uncalibrated`` and its reliability curve."""
    if len(true_ids) == 0:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == true_ids
    reliability = _reliability(confidence, correct)
    metrics = {
        "examples": float(len(true_ids)),
        **ranking_metrics(probabilities, true_ids, top_k),
        "ece": expected_calibration_error(reliability),
        "majority_baseline_top1": float(np.bincount(true_ids).max() / len(true_ids)),
        **_abstain_metrics(confidence, correct, abstain_threshold, target_accuracy),
    }
    reliability_uncalibrated = None
    if uncalibrated is not None:
        reliability_uncalibrated = _reliability(
            uncalibrated.max(axis=1), uncalibrated.argmax(axis=1) == true_ids
        )
        metrics["ece_uncalibrated"] = expected_calibration_error(reliability_uncalibrated)
    return Evaluation(
        metrics=metrics,
        per_tenant=_per_tenant(true_ids, predicted, labels),
        coverage=_coverage_curve(confidence, correct),
        reliability=reliability,
        confusion=_confusion(true_ids, predicted, labels, confusion_tenants),
        reliability_uncalibrated=reliability_uncalibrated,
    )


def ranking_metrics(scores: np.ndarray, true_ids: np.ndarray, top_k: int) -> dict[str, float]:
    """``top1``, ``top<k>`` accuracy (k capped at the number of classes) and ``macro_f1`` (over
    the tenants present in ``true_ids``) of any per-class scores whose order ranks the tenants."""
    k = min(top_k, scores.shape[1])
    top_k_ids = np.argsort(-scores, axis=1)[:, :k]
    predicted = scores.argmax(axis=1)
    return {
        "top1": float((predicted == true_ids).mean()),
        f"top{k}": float((top_k_ids == true_ids[:, None]).any(axis=1).mean()),
        "macro_f1": float(
            f1_score(true_ids, predicted, labels=np.unique(true_ids), average="macro", zero_division=0)
        ),
    }


def expected_calibration_error(reliability: pd.DataFrame) -> float:
    """Mean |confidence - accuracy| over the bins of a reliability table, weighted by count."""
    gaps = (reliability["confidence"] - reliability["accuracy"]).abs()
    return float((reliability["count"] * gaps).sum() / reliability["count"].sum())


def _abstain_metrics(
    confidence: np.ndarray, correct: np.ndarray, threshold: float, target_accuracy: float
) -> dict[str, float]:
    """Coverage and accuracy of the tickets ``threshold`` routes (accuracy 0 when none)."""
    routed = confidence >= threshold
    return {
        "abstain_threshold": threshold,
        "coverage_at_threshold": float(routed.mean()),
        "accuracy_at_threshold": float(correct[routed].mean()) if routed.any() else 0.0,
        "target_accuracy": target_accuracy,
    }


def fit_abstain_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_accuracy: float
) -> tuple[float, float]:
    """The abstain threshold for tickets with these confidences and outcomes, and its coverage
    on them (see :func:`_abstain_threshold`)."""
    return _abstain_threshold(_coverage_curve(confidence, correct), target_accuracy)


def _coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, len(order) + 1)
    return pd.DataFrame(
        {
            "threshold": confidence[order],
            "coverage": answered / len(order),
            "accuracy": np.cumsum(correct[order]) / answered,
        }
    )


def _abstain_threshold(coverage: pd.DataFrame, target_accuracy: float) -> tuple[float, float]:
    """The lowest confidence whose answered set still reaches the target accuracy (the largest
    coverage that does); 1.0 (abstain on everything) when no set reaches it."""
    reaching = coverage.index[coverage["accuracy"] >= target_accuracy]
    if len(reaching) == 0:
        return 1.0, 0.0
    last = reaching.max()
    return float(coverage.at[last, "threshold"]), float(coverage.at[last, "coverage"])


def _reliability(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    frame = pd.DataFrame({"bin": bins, "confidence": confidence, "correct": correct.astype(float)})
    grouped = frame.groupby("bin").agg(
        confidence=("confidence", "mean"), accuracy=("correct", "mean"), count=("correct", "size")
    )
    return grouped.reset_index()


def _per_tenant(true_ids: np.ndarray, predicted: np.ndarray, labels: LabelSet) -> pd.DataFrame:
    ids = np.union1d(np.unique(true_ids), np.unique(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        true_ids, predicted, labels=ids, zero_division=0
    )
    frame = pd.DataFrame(
        {
            "tenant": [labels.tenants[i] for i in ids],
            "support": support,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    )
    return frame.sort_values(["support", "tenant"], ascending=[False, True], ignore_index=True)


def _confusion(true_ids: np.ndarray, predicted: np.ndarray, labels: LabelSet, top_n: int) -> pd.DataFrame:
    frequent = pd.Series(true_ids).value_counts().index[:top_n].to_numpy()
    names = [labels.tenants[i] for i in frequent]
    shown = set(frequent.tolist())

    def among_shown(ids: np.ndarray) -> pd.Categorical:
        return pd.Categorical([labels.tenants[i] if i in shown else None for i in ids], categories=names)

    matrix = pd.crosstab(among_shown(true_ids), among_shown(predicted), dropna=False)
    matrix.index.name, matrix.columns.name = "true", "predicted"
    return matrix
