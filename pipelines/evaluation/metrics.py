"""Evaluation of a classifier's scores: ranking, per-tenant quality, calibration, coverage.

Pure numpy/pandas on (probabilities, true ids); the abstain threshold chosen here is the one
the server uses: below it a ticket goes to human triage.
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


def evaluate_scores(
    probabilities: np.ndarray,
    true_ids: np.ndarray,
    labels: LabelSet,
    *,
    target_accuracy: float,
    top_k: int = 3,
    confusion_tenants: int = 20,
) -> Evaluation:
    """``probabilities``: (n, classes), rows summing to 1; ``true_ids``: (n,) class ids."""
    if len(true_ids) == 0:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == true_ids
    coverage = _coverage_curve(confidence, correct)
    reliability = _reliability(confidence, correct)
    metrics = {
        "examples": float(len(true_ids)),
        **_ranking(probabilities, true_ids, top_k),
        "macro_f1": float(
            f1_score(true_ids, predicted, labels=np.unique(true_ids), average="macro", zero_division=0)
        ),
        "ece": float(
            (reliability["count"] * (reliability["confidence"] - reliability["accuracy"]).abs()).sum()
            / len(true_ids)
        ),
        "majority_baseline_top1": float(np.bincount(true_ids).max() / len(true_ids)),
        **_abstain_metrics(coverage, target_accuracy),
    }
    return Evaluation(
        metrics=metrics,
        per_tenant=_per_tenant(true_ids, predicted, labels),
        coverage=coverage,
        reliability=reliability,
        confusion=_confusion(true_ids, predicted, labels, confusion_tenants),
    )


def _ranking(probabilities: np.ndarray, true_ids: np.ndarray, top_k: int) -> dict[str, float]:
    """``top1`` and ``top<k>`` accuracy (k capped at the number of classes)."""
    k = min(top_k, probabilities.shape[1])
    top_k_ids = np.argsort(-probabilities, axis=1)[:, :k]
    return {
        "top1": float((probabilities.argmax(axis=1) == true_ids).mean()),
        f"top{k}": float((top_k_ids == true_ids[:, None]).any(axis=1).mean()),
    }


def _abstain_metrics(coverage: pd.DataFrame, target_accuracy: float) -> dict[str, float]:
    threshold, covered = _abstain_threshold(coverage, target_accuracy)
    return {
        "abstain_threshold": threshold,
        "coverage_at_threshold": covered,
        "target_accuracy": target_accuracy,
    }


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
