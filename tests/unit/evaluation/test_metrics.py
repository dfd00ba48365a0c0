"""Pure scores: top-k, macro-F1, per-tenant report, calibration, abstain threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.metrics import evaluate_scores
from pipelines.model.artifact import LabelSet

LABELS = LabelSet(("10197", "20001", "30002"))


def scores() -> tuple[np.ndarray, np.ndarray]:
    # 6 tickets: the 4 most confident are right, the 2 least confident wrong.
    probabilities = np.array(
        [
            [0.90, 0.05, 0.05],  # true 0, right
            [0.10, 0.80, 0.10],  # true 1, right
            [0.05, 0.15, 0.80],  # true 2, right
            [0.70, 0.20, 0.10],  # true 0, right
            [0.50, 0.40, 0.10],  # true 1, wrong (second guess right)
            [0.45, 0.15, 0.40],  # true 2, wrong (second guess right)
        ]
    )
    return probabilities, np.array([0, 1, 2, 0, 1, 2])


def test_headline_metrics_by_hand() -> None:
    evaluation = evaluate_scores(*scores(), LABELS, target_accuracy=1.0, top_k=2)
    metrics = evaluation.metrics
    assert metrics["top1"] == pytest.approx(4 / 6)
    assert metrics["top2"] == pytest.approx(1.0)
    # F1: tenant 0 p=2/4 r=1 → 2/3; tenants 1 and 2 p=1 r=1/2 → 2/3.
    assert metrics["macro_f1"] == pytest.approx(2 / 3)
    assert metrics["majority_baseline_top1"] == pytest.approx(2 / 6)
    # Abstain below 0.7: the four answered tickets are all right (coverage 4/6).
    assert metrics["abstain_threshold"] == pytest.approx(0.70)
    assert metrics["coverage_at_threshold"] == pytest.approx(4 / 6)


def test_per_tenant_report_and_unreachable_target() -> None:
    evaluation = evaluate_scores(*scores(), LABELS, target_accuracy=0.5, top_k=3)
    per_tenant = evaluation.per_tenant.set_index("tenant")
    assert per_tenant.loc["10197", "precision"] == pytest.approx(0.5)
    assert per_tenant.loc["20001", "recall"] == pytest.approx(0.5)
    assert per_tenant["support"].sum() == 6
    assert evaluation.metrics["coverage_at_threshold"] == pytest.approx(1.0)  # 4/6 ≥ 0.5 on everything
    never = evaluate_scores(np.array([[0.6, 0.4, 0.0]]), np.array([1]), LABELS, target_accuracy=0.9)
    assert never.metrics["abstain_threshold"] == 1.0 and never.metrics["coverage_at_threshold"] == 0.0


def test_calibration_error_of_a_perfectly_calibrated_model_is_zero() -> None:
    probabilities = np.tile([1.0, 0.0, 0.0], (10, 1))
    evaluation = evaluate_scores(probabilities, np.zeros(10, dtype=int), LABELS, target_accuracy=0.9)
    assert evaluation.metrics["ece"] == pytest.approx(0.0)
    overconfident = evaluate_scores(probabilities, np.array([0] * 5 + [1] * 5), LABELS, target_accuracy=0.9)
    assert overconfident.metrics["ece"] == pytest.approx(0.5)


def test_empty_evaluation_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        evaluate_scores(np.zeros((0, 3)), np.zeros(0, dtype=int), LABELS, target_accuracy=0.9)
