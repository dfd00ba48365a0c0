"""The classic baseline (TF-IDF + linear SVM) and the first-version gate rule built on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.config import PromotionConfig
from pipelines.evaluation.baseline import ClassicBaseline, sample_rows
from pipelines.model.artifact import LabelSet
from pipelines.registry.promotion import decide

# Each tenant owns two services; every ticket also carries words shared by all tenants.
SERVICES = {
    "alpha": ["billing-api", "invoice-db"],
    "bravo": ["search-web", "indexer"],
    "charlie": ["kafka-bus", "etl-jobs"],
    "delta": ["auth-gw", "sso-proxy"],
}
SHARED = ["latency", "5xx", "timeout", "disk", "oom", "p99", "cluster", "sg1", "deploy", "alert"]


def tickets(n: int, seed: int, prefix: str) -> pd.DataFrame:
    """``n`` tickets, tenant ``alpha`` the majority (40%)."""
    rng = np.random.default_rng(seed)
    tenants = rng.choice(list(SERVICES), size=n, p=[0.4, 0.2, 0.2, 0.2])
    texts = [
        f"service: {rng.choice(SERVICES[t])} | title: " + " ".join(rng.choice(SHARED, size=6))
        for t in tenants
    ]
    return pd.DataFrame({"ticket_id": [f"{prefix}-{i}" for i in range(n)], "text": texts, "tenant": tenants})


def test_beats_the_majority_on_separable_text_scored_in_the_models_ids() -> None:
    train, test = tickets(400, seed=0, prefix="train"), tickets(200, seed=1, prefix="test")
    baseline = ClassicBaseline.fit(train)
    # The model's labels: another order, and a tenant the baseline never saw.
    labels = LabelSet(("delta", "echo", "charlie", "bravo", "alpha"))
    true_ids = test["tenant"].map(labels.id_of()).to_numpy()
    metrics = baseline.metrics(test["text"].tolist(), true_ids, labels, top_k=3)
    majority = test["tenant"].value_counts(normalize=True).iloc[0]
    assert metrics["baseline_top1"] > majority + 0.4
    assert metrics["baseline_top3"] >= metrics["baseline_top1"]
    assert metrics["baseline_macro_f1"] > 0.9 and metrics["baseline_train_rows"] == 400
    scores = baseline.scores(test["text"].tolist(), labels)
    assert scores.shape == (200, 5) and np.isneginf(scores[:, labels.id_of()["echo"]]).all()


def test_training_sample_is_capped_and_independent_of_batching() -> None:
    rows = tickets(500, seed=2, prefix="t")
    whole = sample_rows([rows], max_rows=120)
    batched = sample_rows([rows.iloc[i : i + 37] for i in range(0, 500, 37)][::-1], max_rows=120)
    assert len(whole) == 120
    pd.testing.assert_frame_equal(whole, batched)
    assert set(whole["ticket_id"]) <= set(rows["ticket_id"])
    assert len(sample_rows([rows], max_rows=1000)) == 500
    assert sample_rows([], max_rows=10).empty


def test_needs_two_tenants() -> None:
    with pytest.raises(ValueError, match="two tenants"):
        ClassicBaseline.fit(tickets(50, seed=3, prefix="t").assign(tenant="alpha"))


CLASSIC = PromotionConfig(first_version_margin=0.2, first_version_baseline="classic")


def series(*values: str) -> pd.Series:
    return pd.Series(list(values))


def test_first_version_with_the_classic_rule_must_also_reach_the_classic_baseline() -> None:
    truth = series(*("A" * 6), *("B" * 2), *("C" * 2))  # majority baseline 0.6
    challenger = series(*("A" * 6), *("B" * 2), "C", "A")  # top-1 0.9: beats the majority by 0.3
    better_baseline = truth.copy()  # classic top-1 1.0
    rejected = decide(truth, challenger, None, set(), {"A", "B", "C"}, CLASSIC, "1", better_baseline)
    assert not rejected.promoted
    assert rejected.metrics["classic_baseline_top1"] == 1.0
    assert any("is below the classic baseline's 1.000" in reason for reason in rejected.reasons)
    tied = decide(truth, challenger, None, set(), {"A", "B", "C"}, CLASSIC, "1", challenger.copy())
    assert tied.promoted and any("reaches the classic" in reason for reason in tied.reasons)
    majority_only = series(*("A" * 10))  # reaches a classic baseline just as bad, not the margin
    assert not decide(truth, majority_only, None, set(), {"A"}, CLASSIC, "1", majority_only.copy()).promoted


def test_classic_rule_without_a_baseline_rejects_and_the_default_rule_ignores_it() -> None:
    truth = series(*("A" * 6), *("B" * 4))
    missing = decide(truth, truth, None, set(), {"A", "B"}, CLASSIC, "1", None)
    assert not missing.promoted and "no classic baseline" in missing.reasons[-1]
    majority_rule = PromotionConfig(first_version_margin=0.2)
    assert majority_rule.first_version_baseline == "majority"
    shown = decide(truth, truth, None, set(), {"A", "B"}, majority_rule, "1", series(*("A" * 10)))
    assert shown.promoted and shown.metrics["classic_baseline_top1"] == 0.6  # reported, not judged
