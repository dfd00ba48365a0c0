from __future__ import annotations

import pandas as pd

from pipelines.config import PromotionConfig
from pipelines.registry.promotion import decide

RULES = PromotionConfig(top1_tolerance=0.02, recall_drop=0.10, min_support=5, first_version_margin=0.2)
KNOWN = {"A", "B", "C"}


def series(*values: str) -> pd.Series:
    return pd.Series(list(values))


def test_first_version_must_beat_the_majority_baseline_by_the_margin() -> None:
    truth = series(*("A" * 6), *("B" * 2), *("C" * 2))  # majority baseline 0.6
    good = decide(truth, truth, None, set(), KNOWN, RULES, "1")
    assert good.promoted and "beats the majority baseline 0.600" in good.reasons[0]
    majority_only = decide(truth, series(*("A" * 10)), None, set(), KNOWN, RULES, "1")
    assert not majority_only.promoted and "does not beat" in majority_only.reasons[0]


def test_better_challenger_is_promoted_and_new_tenants_are_only_reported() -> None:
    truth = series(*("A" * 10), *("B" * 10), *("D" * 3))
    champion = series(*("A" * 10), *("B" * 8), "A", "A", *("A" * 3))
    challenger = series(*("A" * 10), *("B" * 10), *("D" * 3))
    decision = decide(truth, challenger, champion, KNOWN, KNOWN | {"D"}, RULES, "2")
    assert decision.promoted
    assert decision.new_tenants == {"D": 1.0}
    assert decision.metrics["judged_tickets"] == 20  # the champion cannot know D


def test_worse_top1_is_rejected_with_the_rule_named() -> None:
    truth = series(*("A" * 10), *("B" * 10))
    decision = decide(truth, series(*("A" * 20)), truth, KNOWN, KNOWN, RULES, "2")
    assert not decision.promoted
    assert any(reason.startswith("top-1 0.500 is below the champion's 1.000") for reason in decision.reasons)


def test_one_tenant_regression_is_named_even_when_top1_holds() -> None:
    truth = series(*("A" * 50), *("B" * 50), *("C" * 6), *("A" * 4))
    champion = series(*("A" * 50), *("B" * 50), *("C" * 6), *("B" * 4))  # wrong on the last 4 A
    # Challenger fixes the 4 A but loses C: top-1 104/110 vs 106/110 (within 0.02), C recall 1 → 0.
    challenger = series(*("A" * 50), *("B" * 50), *("A" * 6), *("A" * 4))
    decision = decide(truth, challenger, champion, KNOWN, KNOWN, RULES, "3")
    assert not decision.promoted
    assert [r["tenant"] for r in decision.regressions] == ["C"]
    assert "C (1.00 → 0.00)" in " ".join(decision.reasons)


def test_small_tenants_are_not_judged() -> None:
    truth = series(*("A" * 50), *("C" * 4))
    champion = truth.copy()
    challenger = series(*("A" * 50), *("A" * 4))  # C has 4 < min_support tickets; top-1 drop 0.074
    loose = PromotionConfig(top1_tolerance=0.1, recall_drop=0.1, min_support=5, first_version_margin=0.2)
    decision = decide(truth, challenger, champion, KNOWN, KNOWN, loose, "4")
    assert decision.promoted and decision.regressions == []
    assert set(decision.record().as_tags()) >= {"gate.decision", "gate.reasons", "gate.regressions"}
