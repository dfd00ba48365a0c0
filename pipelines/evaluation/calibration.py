"""What a classifier learns on its validation days after training: a temperature and an abstain
threshold, both fit on tickets it was neither trained nor tested on.

Temperature scaling (Guo et al., 2017) divides the logits by one number ``T`` chosen to minimise
the validation negative log-likelihood: it changes confidences, never the ranking. The abstain
threshold is then chosen on the calibrated validation confidences, so the test days measure it
honestly instead of choosing it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pipelines.evaluation.metrics import fit_abstain_threshold
from pipelines.model.inference import softmax

log = logging.getLogger(__name__)

# Bounds of the fitted temperature: beyond them a fit says more about the validation set than
# about the model (a handful of tickets, all right or all wrong).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_GOLDEN = (math.sqrt(5) - 1) / 2
_SEARCH_STEPS = 60  # golden-section steps on log T: the bracket shrinks to ~1e-12 of its width


@dataclass(frozen=True)
class Calibration:
    temperature: float
    abstain_threshold: float
    tickets: int  # validation tickets it was fit on
    fallback: bool  # too few tickets: T = 1 and the configured conservative threshold

    def descriptor_fields(self) -> dict[str, float | dict[str, float | int | bool]]:
        """What the classifier directory's ``classifier.json`` keeps (read by TicketClassifier)."""
        return {
            "temperature": self.temperature,
            "abstain_threshold": self.abstain_threshold,
            "calibration": {"fit_on": "validation", "tickets": self.tickets, "fallback": self.fallback},
        }

    def as_metrics(self) -> dict[str, float]:
        """How the threshold was fit (the temperature is reported by every evaluation)."""
        return {
            "threshold_fit_tickets": float(self.tickets),
            "threshold_fallback": float(self.fallback),
        }


def calibrate(
    logits: np.ndarray,
    true_ids: np.ndarray,
    *,
    target_accuracy: float,
    min_tickets: int,
    fallback_threshold: float,
) -> Calibration:
    """Temperature, then the abstain threshold reaching ``target_accuracy`` on the calibrated
    validation confidences. Fewer than ``min_tickets`` tickets: no fit (T = 1) and the
    conservative ``fallback_threshold``, logged as a warning."""
    tickets = len(true_ids)
    if tickets < min_tickets:
        log.warning(
            "abstain threshold: only %d validation ticket(s), fewer than evaluate.min_threshold_tickets "
            "(%d); using the conservative evaluate.fallback_abstain_threshold %.2f and no temperature",
            tickets,
            min_tickets,
            fallback_threshold,
        )
        return Calibration(1.0, fallback_threshold, tickets, fallback=True)
    temperature = fit_temperature(logits, true_ids)
    probabilities = softmax(logits, temperature)
    correct = probabilities.argmax(axis=1) == true_ids
    threshold, coverage = fit_abstain_threshold(probabilities.max(axis=1), correct, target_accuracy)
    log.info(
        "calibrated on %d validation tickets: temperature %.3f, abstain threshold %.3f (validation coverage %.3f)",
        tickets,
        temperature,
        threshold,
        coverage,
    )
    return Calibration(temperature, threshold, tickets, fallback=False)


def fit_temperature(logits: np.ndarray, true_ids: np.ndarray) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the mean NLL of
    ``softmax(logits / T)``: golden-section search on log T (the NLL is unimodal in it),
    deterministic and bounded."""
    if len(true_ids) == 0:
        raise ValueError("cannot fit a temperature on no tickets")
    z = logits.astype(np.float64)
    true_logits = z[np.arange(len(true_ids)), true_ids]

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float((log_norm - true_logits / math.exp(log_t)).mean())

    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    left, right = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    f_left, f_right = nll(left), nll(right)
    for _ in range(_SEARCH_STEPS):
        if f_left <= f_right:
            high, right, f_right = right, left, f_left
            left = high - _GOLDEN * (high - low)
            f_left = nll(left)
        else:
            low, left, f_left = left, right, f_right
            right = low + _GOLDEN * (high - low)
            f_right = nll(right)
    return float(math.exp((low + high) / 2))
