"""The classic baseline of every evaluation: TF-IDF (word and character n-grams) + a linear SVM,
trained on the same training days and model text as the classifier, scored on the same tickets.

A reference the model has to earn its cost against: on templated text it is hard to beat, on
real text a small model that does not know the domain can lose to it. Training rows are capped
(``evaluate.baseline_max_train_rows``) by a deterministic sample that streams: the rows whose
ticket id hashes lowest, kept batch by batch, so no more than the cap is ever held at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.svm import LinearSVC

from pipelines.contract.columns import LABEL_COLUMN, TEXT_COLUMN
from pipelines.evaluation.metrics import ranking_metrics
from pipelines.model.artifact import LabelSet

log = logging.getLogger(__name__)

BASELINE_COLUMNS = ["ticket_id", TEXT_COLUMN, LABEL_COLUMN]
# Vocabulary caps: the baseline's memory stays bounded whatever the archive's vocabulary.
MAX_WORD_FEATURES = 200_000
MAX_CHAR_FEATURES = 300_000


@dataclass(frozen=True)
class ClassicBaseline:
    pipeline: Pipeline
    tenants: tuple[str, ...]  # the classes it was trained on, in the pipeline's order
    train_rows: int

    @classmethod
    def fit(cls, rows: pd.DataFrame, *, seed: int = 0) -> ClassicBaseline:
        """Trained on ``rows`` (``text`` and ``tenant`` columns): at least two tenants needed."""
        tenants = rows[LABEL_COLUMN].astype(str)
        if tenants.nunique() < 2:
            raise ValueError("the classic baseline needs training tickets of at least two tenants")
        features = FeatureUnion(
            [
                (
                    "words",
                    TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=MAX_WORD_FEATURES),
                ),
                (
                    "chars",
                    TfidfVectorizer(
                        analyzer="char_wb",
                        ngram_range=(2, 4),
                        sublinear_tf=True,
                        max_features=MAX_CHAR_FEATURES,
                    ),
                ),
            ]
        )
        pipeline = make_pipeline(features, LinearSVC(C=0.5, random_state=seed))
        pipeline.fit(rows[TEXT_COLUMN].tolist(), tenants.to_numpy())
        log.info(
            "classic baseline: TF-IDF + linear SVM on %d tickets of %d tenants", len(rows), tenants.nunique()
        )
        return cls(pipeline, tuple(pipeline.classes_.tolist()), len(rows))

    def scores(self, texts: list[str], labels: LabelSet) -> np.ndarray:
        """Decision scores (n, len(labels)) in ``labels``' class ids, so they rank like the
        model's probabilities; a tenant the baseline never saw scores -inf (never predicted)."""
        raw = self.pipeline.decision_function(texts)
        if raw.ndim == 1:  # two classes: sklearn gives the second class's margin only
            raw = np.stack([-raw, raw], axis=1)
        aligned = np.full((len(texts), len(labels)), -np.inf)
        ids = labels.id_of()
        known = [(column, ids[tenant]) for column, tenant in enumerate(self.tenants) if tenant in ids]
        columns, targets = zip(*known, strict=True) if known else ((), ())
        aligned[:, list(targets)] = raw[:, list(columns)]
        return aligned

    def metrics(
        self, texts: list[str], true_ids: np.ndarray, labels: LabelSet, top_k: int
    ) -> dict[str, float]:
        """``baseline_top1``, ``baseline_top<k>``, ``baseline_macro_f1`` and its training size."""
        scored = ranking_metrics(self.scores(texts, labels), true_ids, top_k)
        return {
            **{f"baseline_{name}": value for name, value in scored.items()},
            "baseline_train_rows": float(self.train_rows),
        }


def sample_rows(batches: Iterable[pd.DataFrame], max_rows: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``batches`` (each with ``ticket_id``, ``text``, ``tenant``):
    those whose ticket id hashes lowest, so the sample does not depend on the order or the size
    of the batches, and never more than ``max_rows`` plus one batch are held."""
    kept: pd.DataFrame | None = None
    seen = 0
    for batch in batches:
        seen += len(batch)
        hashed = batch[BASELINE_COLUMNS].assign(
            _hash=pd.util.hash_pandas_object(batch["ticket_id"], index=False).to_numpy()
        )
        kept = hashed if kept is None else pd.concat([kept, hashed], ignore_index=True)
        if len(kept) > max_rows:
            kept = kept.nsmallest(max_rows, "_hash")
    if kept is None:
        return pd.DataFrame(columns=BASELINE_COLUMNS)
    if seen > max_rows:
        log.info(
            "classic baseline: trained on %d of %d tickets (evaluate.baseline_max_train_rows)", max_rows, seen
        )
    return kept.drop(columns="_hash").sort_values("ticket_id", ignore_index=True)
