"""Temperature scaling and the abstain threshold, fit on validation tickets; the classifier
applies the temperature it was saved with (none saved: T = 1)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import ModelError
from pipelines.evaluation.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, calibrate, fit_temperature
from pipelines.evaluation.metrics import evaluate_scores
from pipelines.model.artifact import LabelSet
from pipelines.model.inference import TicketClassifier, softmax

CLASSES = 8
FIXTURE_CLASSIFIER = (
    Path(__file__).parents[2] / "fixtures" / "pre_layout_version" / "model" / "artifacts" / "classifier"
)


def overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``temperature`` times sharper than the distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.0, 2.0, size=(n, CLASSES))
    cumulative = softmax(honest).astype(np.float64).cumsum(axis=1)
    true_ids = np.minimum((cumulative < rng.random((n, 1))).sum(axis=1), CLASSES - 1)
    return honest * temperature, true_ids


def ece_before_after(logits: np.ndarray, true_ids: np.ndarray, temperature: float) -> tuple[float, float]:
    labels = LabelSet(tuple(f"t{i}" for i in range(CLASSES)))
    metrics = evaluate_scores(
        softmax(logits, temperature),
        true_ids,
        labels,
        target_accuracy=0.9,
        abstain_threshold=0.5,
        uncalibrated=softmax(logits),
    ).metrics
    return metrics["ece_uncalibrated"], metrics["ece"]


def test_fit_recovers_a_known_temperature_and_reduces_the_error_on_other_tickets() -> None:
    validation = overconfident(4000, temperature=2.5, seed=1)
    temperature = fit_temperature(*validation)
    assert temperature == pytest.approx(2.5, rel=0.08)
    assert fit_temperature(*validation) == temperature  # deterministic
    before, after = ece_before_after(*overconfident(4000, temperature=2.5, seed=2), temperature)
    assert after < before / 2
    underconfident = overconfident(4000, temperature=0.5, seed=3)
    assert fit_temperature(*underconfident) == pytest.approx(0.5, rel=0.08)


def test_fit_stays_within_its_bounds() -> None:
    # Every ticket right with a wide margin: the NLL keeps falling as T shrinks.
    logits = np.tile([10.0, 0.0, 0.0], (50, 1))
    assert fit_temperature(logits, np.zeros(50, dtype=int)) == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    # Every ticket wrong: flatter is always better.
    assert fit_temperature(logits, np.ones(50, dtype=int)) == pytest.approx(MAX_TEMPERATURE, rel=1e-3)


def test_threshold_is_fit_on_the_calibrated_validation_tickets() -> None:
    logits, true_ids = overconfident(2000, temperature=2.0, seed=4)
    calibration = calibrate(logits, true_ids, target_accuracy=0.9, min_tickets=100, fallback_threshold=0.95)
    assert not calibration.fallback and calibration.tickets == 2000
    probabilities = softmax(logits, calibration.temperature)
    routed = probabilities.max(axis=1) >= calibration.abstain_threshold
    assert 0 < routed.mean() < 1
    assert (probabilities.argmax(axis=1) == true_ids)[routed].mean() >= 0.9
    fields = calibration.descriptor_fields()
    assert fields["temperature"] == calibration.temperature
    assert fields["abstain_threshold"] == calibration.abstain_threshold


def test_too_few_validation_tickets_fall_back_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    logits, true_ids = overconfident(40, temperature=2.0, seed=5)
    with caplog.at_level(logging.WARNING, logger="pipelines.evaluation.calibration"):
        calibration = calibrate(
            logits, true_ids, target_accuracy=0.9, min_tickets=100, fallback_threshold=0.95
        )
    assert (calibration.temperature, calibration.abstain_threshold, calibration.fallback) == (1.0, 0.95, True)
    assert calibration.as_metrics() == {"threshold_fit_tickets": 40.0, "threshold_fallback": 1.0}
    assert "evaluate.min_threshold_tickets" in caplog.text


def test_classifier_applies_its_saved_temperature_and_older_ones_have_none(tmp_path: Path) -> None:
    older = TicketClassifier.from_dir(FIXTURE_CLASSIFIER)  # saved before calibration existed
    texts = ["service: payment-gateway | title: p99 latency above 800ms", "title: disk full on node"]
    logits = older.predict_logits_texts(texts)
    assert older.temperature == 1.0
    np.testing.assert_allclose(older.predict_proba_texts(texts), softmax(logits), atol=1e-6)
    calibrated_dir = shutil.copytree(FIXTURE_CLASSIFIER, tmp_path / "classifier")
    descriptor = json.loads((calibrated_dir / "classifier.json").read_text())
    (calibrated_dir / "classifier.json").write_text(json.dumps({**descriptor, "temperature": 3.0}))
    calibrated = TicketClassifier.from_dir(calibrated_dir)
    np.testing.assert_allclose(calibrated.predict_proba_texts(texts), softmax(logits, 3.0), atol=1e-6)
    confidence = calibrated.predict([{"title": "disk full on node"}])[0].confidence
    assert confidence == pytest.approx(float(softmax(calibrated.predict_logits_texts(texts[1:]), 3.0).max()))
    with pytest.raises(ModelError, match="temperature"):
        TicketClassifier(
            older.model, older.tokenizer, older.labels, older.text_builder, max_length=8, temperature=0
        )
