"""Pure scores: top-k, macro-F1, per-tenant report, calibration, abstain threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.metrics import Evaluation, evaluate_scores, fit_abstain_threshold
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


def evaluate(probabilities: np.ndarray, true_ids: np.ndarray, **options: object) -> Evaluation:
    return evaluate_scores(
        probabilities, true_ids, LABELS, **{"target_accuracy": 0.9, "abstain_threshold": 0.0, **options}
    )


def test_headline_metrics_by_hand() -> None:
    evaluation = evaluate(*scores(), target_accuracy=1.0, abstain_threshold=0.7, top_k=2)
    metrics = evaluation.metrics
    assert metrics["top1"] == pytest.approx(4 / 6)
    assert metrics["top2"] == pytest.approx(1.0)
    # F1: tenant 0 p=2/4 r=1 → 2/3; tenants 1 and 2 p=1 r=1/2 → 2/3.
    assert metrics["macro_f1"] == pytest.approx(2 / 3)
    assert metrics["majority_baseline_top1"] == pytest.approx(2 / 6)
    # The given threshold 0.7 routes the four most confident tickets, all right.
    assert metrics["abstain_threshold"] == pytest.approx(0.70)
    assert metrics["coverage_at_threshold"] == pytest.approx(4 / 6)
    assert metrics["accuracy_at_threshold"] == pytest.approx(1.0)


def test_the_threshold_is_measured_not_chosen() -> None:
    # A threshold fit elsewhere (0.5) routes 5 of 6 here, 4 of them right: below a target of
    # 0.95, and reported as such rather than moved to reach it.
    metrics = evaluate(*scores(), target_accuracy=0.95, abstain_threshold=0.5).metrics
    assert metrics["abstain_threshold"] == 0.5
    assert metrics["coverage_at_threshold"] == pytest.approx(5 / 6)
    assert metrics["accuracy_at_threshold"] == pytest.approx(4 / 5)
    nothing_routed = evaluate(*scores(), abstain_threshold=0.99).metrics
    assert nothing_routed["coverage_at_threshold"] == 0.0 and nothing_routed["accuracy_at_threshold"] == 0.0


def test_threshold_fit_reaches_the_target_at_the_largest_coverage() -> None:
    probabilities, true_ids = scores()
    correct = probabilities.argmax(axis=1) == true_ids
    threshold, coverage = fit_abstain_threshold(probabilities.max(axis=1), correct, target_accuracy=1.0)
    assert (threshold, coverage) == (pytest.approx(0.70), pytest.approx(4 / 6))
    assert fit_abstain_threshold(probabilities.max(axis=1), correct, 0.5) == (pytest.approx(0.45), 1.0)
    assert fit_abstain_threshold(np.array([0.6]), np.array([False]), 0.9) == (1.0, 0.0)  # unreachable


def test_per_tenant_report() -> None:
    per_tenant = evaluate(*scores(), top_k=3).per_tenant.set_index("tenant")
    assert per_tenant.loc["10197", "precision"] == pytest.approx(0.5)
    assert per_tenant.loc["20001", "recall"] == pytest.approx(0.5)
    assert per_tenant["support"].sum() == 6


def test_calibration_error_of_a_perfectly_calibrated_model_is_zero() -> None:
    probabilities = np.tile([1.0, 0.0, 0.0], (10, 1))
    assert evaluate(probabilities, np.zeros(10, dtype=int)).metrics["ece"] == pytest.approx(0.0)
    overconfident = evaluate(probabilities, np.array([0] * 5 + [1] * 5), uncalibrated=probabilities)
    assert overconfident.metrics["ece"] == pytest.approx(0.5)
    assert overconfident.metrics["ece_uncalibrated"] == pytest.approx(0.5)
    assert overconfident.reliability_uncalibrated is not None


def test_empty_evaluation_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        evaluate(np.zeros((0, 3)), np.zeros(0, dtype=int))
