"""The promotion gate: challenger vs champion on the same tickets; moves alias ``champion``.

:func:`decide` is the pure rule set; :func:`promote` and :func:`rollback` are the jobs.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import OncallConfig, PromotionConfig
from pipelines.contract.columns import LABEL_COLUMN
from pipelines.data.window import labelled_rows
from pipelines.errors import ModelError
from pipelines.model.inference import TicketClassifier
from pipelines.ray_runtime import ray_session
from pipelines.registry.lock import jobs_lock
from pipelines.registry.versions import CHALLENGER, CHAMPION, GateRecord, Registry, VersionRef

log = logging.getLogger(__name__)


@dataclass
class Decision:
    version: str
    promoted: bool
    reasons: list[str]
    regressions: list[dict[str, float | str]] = field(default_factory=list)
    new_tenants: dict[str, float] = field(default_factory=dict)  # tenant → challenger recall
    metrics: dict[str, float] = field(default_factory=dict)
    champion: str | None = None

    def record(self) -> GateRecord:
        """What is kept on the version."""
        return GateRecord(
            decision="promoted" if self.promoted else "rejected",
            reasons=tuple(self.reasons),
            champion=self.champion,
            regressions=self.regressions,
            new_tenants=self.new_tenants,
        )


def decide(
    truth: pd.Series,
    challenger: pd.Series,
    champion: pd.Series | None,
    champion_tenants: set[str],
    challenger_tenants: set[str],
    rules: PromotionConfig,
    version: str,
    baseline: pd.Series | None = None,
) -> Decision:
    """Rules on predicted tenants (aligned Series of tenant ids).

    With a champion: top-1 on tickets whose tenant the champion knows may drop at most
    ``top1_tolerance``; no such tenant with ``min_support`` tickets may lose more than
    ``recall_drop`` recall. Tenants the champion cannot know are reported, not judged.
    Without one: see :func:`_decide_first_version`. ``baseline``: the classic baseline's
    answers on the same tickets, its top-1 reported (``classic_baseline_top1``) either way.
    """
    if champion is None:
        return _decide_first_version(truth, challenger, rules, version, baseline)
    challenger_right = challenger == truth
    known = truth.isin(champion_tenants)
    learned = sorted(set(truth[~known]) & (challenger_tenants - champion_tenants))
    new_tenants = {tenant: float(challenger_right[truth == tenant].mean()) for tenant in learned}
    champion_top1 = float((champion == truth)[known].mean()) if known.any() else 0.0
    challenger_top1 = float(challenger_right[known].mean()) if known.any() else 0.0
    metrics = {
        "challenger_top1": challenger_top1,
        "champion_top1": champion_top1,
        "judged_tickets": float(known.sum()),
        **_classic_baseline_metrics(truth, baseline),
    }
    reasons: list[str] = []
    if challenger_top1 < champion_top1 - rules.top1_tolerance:
        reasons.append(
            f"top-1 {challenger_top1:.3f} is below the champion's {champion_top1:.3f} by more than "
            f"{rules.top1_tolerance:.3f}"
        )
    regressions = _recall_regressions(truth, challenger, champion, known, rules)
    if regressions:
        names = ", ".join(
            f"{r['tenant']} ({r['champion_recall']:.2f} → {r['challenger_recall']:.2f})" for r in regressions
        )
        reasons.append(
            f"recall of {len(regressions)} tenant(s) drops by more than {rules.recall_drop:.2f}: {names}"
        )
    promoted = not reasons
    if promoted:
        reasons.append(
            f"top-1 {challenger_top1:.3f} vs champion {champion_top1:.3f} within tolerance and no tenant regressed"
        )
    if new_tenants:
        reasons.append(
            f"{len(new_tenants)} tenant(s) new to the champion, reported only: {', '.join(new_tenants)}"
        )
    return Decision(version, promoted, reasons, regressions, new_tenants, metrics)


def _decide_first_version(
    truth: pd.Series,
    challenger: pd.Series,
    rules: PromotionConfig,
    version: str,
    baseline: pd.Series | None = None,
) -> Decision:
    """No champion yet: top-1 must beat the majority-class baseline by ``first_version_margin``;
    with ``first_version_baseline: classic`` it must also reach the classic baseline's top-1 on
    the same tickets (a tie passes: the rule asks the model to earn its cost, not to win by a
    margin the classic baseline's own noise would decide)."""
    majority = float(truth.value_counts(normalize=True).iloc[0])
    top1 = float((challenger == truth).mean())
    metrics = {
        "challenger_top1": top1,
        "majority_baseline_top1": majority,
        **_classic_baseline_metrics(truth, baseline),
    }
    beats_majority = top1 >= majority + rules.first_version_margin
    reasons = [
        f"first version: top-1 {top1:.3f} {'beats' if beats_majority else 'does not beat'} the majority "
        f"baseline {majority:.3f} by the required {rules.first_version_margin:.2f}"
    ]
    if rules.first_version_baseline == "majority":
        return Decision(version, beats_majority, reasons, metrics=metrics)
    if "classic_baseline_top1" not in metrics:
        reasons.append(
            "first version: no classic baseline to compare with (promotion.first_version_baseline: classic)"
        )
        return Decision(version, False, reasons, metrics=metrics)
    classic = metrics["classic_baseline_top1"]
    reaches_classic = top1 >= classic
    reasons.append(
        f"first version: top-1 {top1:.3f} {'reaches' if reaches_classic else 'is below'} the classic "
        f"baseline's {classic:.3f} (TF-IDF + linear SVM on its training days)"
    )
    return Decision(version, beats_majority and reaches_classic, reasons, metrics=metrics)


def _classic_baseline_metrics(truth: pd.Series, baseline: pd.Series | None) -> dict[str, float]:
    return {} if baseline is None else {"classic_baseline_top1": float((baseline == truth).mean())}


def _recall_regressions(
    truth: pd.Series, challenger: pd.Series, champion: pd.Series, known: pd.Series, rules: PromotionConfig
) -> list[dict[str, float | str]]:
    """Tenants the champion knows, with ``min_support`` tickets, whose recall drops too much."""
    regressions: list[dict[str, float | str]] = []
    for tenant, support in truth[known].value_counts().items():
        if support < rules.min_support:
            continue
        rows = truth == tenant
        before = float((champion == truth)[rows].mean())
        after = float((challenger == truth)[rows].mean())
        if before - after > rules.recall_drop:
            regressions.append(
                {
                    "tenant": tenant,
                    "support": int(support),
                    "champion_recall": before,
                    "challenger_recall": after,
                }
            )
    return regressions


def promote(
    config: OncallConfig,
    version: str | None = None,
    *,
    archive_uri: str | None = None,
    force: bool = False,
    reason: str = "",
) -> Decision:
    """Gate a version (default: alias ``challenger``) against ``champion``; promote if it passes
    (or if forced, with the reason recorded). The decision is tagged on the version. Under the
    jobs' lock (:mod:`pipelines.registry.lock`).

    Tickets come from ``archive_uri``, else the configured ``data.archive``, else the archive the
    candidate was trained on: the reference labels are the platform's, not the candidate's."""
    with jobs_lock(config, "promote"):
        return _gate_and_promote(config, version, archive_uri, force, reason)


def _gate_and_promote(
    config: OncallConfig, version: str | None, archive_uri: str | None, force: bool, reason: str
) -> Decision:
    # Versions
    registry = Registry(config)
    registry.finish_interrupted_promotion()
    candidate = registry.get(version=version) if version else registry.get(alias=CHALLENGER)
    champion = registry.alias_or_none(CHAMPION)
    if champion is not None and champion.version == candidate.version:
        return Decision(candidate.version, True, ["already the champion"], champion=champion.version)
    archive = archive_uri or config.data.archive or candidate.tags.get("archive") or config.archive_uri

    # Both models on the same tickets
    with tempfile.TemporaryDirectory() as folder:
        challenger_model = TicketClassifier.from_dir(
            registry.download(candidate, Path(folder) / "challenger")
        )
        champion_model = (
            TicketClassifier.from_dir(registry.download(champion, Path(folder) / "champion"))
            if champion
            else None
        )
        truth, predictions = _predict_evaluation_set(
            config, archive, candidate, challenger_model, champion_model
        )

    # Decision
    decision = decide(
        truth,
        predictions["challenger"],
        predictions.get("champion"),
        set(champion_model.labels.tenants) if champion_model else set(),
        set(challenger_model.labels.tenants),
        config.promotion,
        candidate.version,
        predictions.get("baseline"),
    )
    decision.champion = champion.version if champion else None
    if force and not decision.promoted:
        decision.promoted = True
        decision.reasons.append(f"forced: {reason or 'no reason given'}")

    # Record and aliases
    registry.record_gate(candidate.version, decision.record())
    if decision.promoted:
        registry.crown(candidate.version, dethroned=decision.champion)
    return decision


def _predict_evaluation_set(
    config: OncallConfig,
    archive: str,
    candidate: VersionRef,
    challenger: TicketClassifier,
    champion: TicketClassifier | None,
) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Both models on the candidate's test days (the newest labelled days it was not trained on)
    plus the configured golden set, each with its own text builder, aligned by ticket id; and
    the classic baseline (role ``baseline``), trained on the candidate's training days with the
    challenger's text, on the challenger's tickets."""
    # evaluation/ imports registry/ (tracking, versions): imported here, when a gate runs.
    from pipelines.evaluation.job import baseline_for_window

    window = candidate.test_window
    if window is None:
        raise ModelError(f"version {candidate.version} records no test days (tag window.test) to gate on")
    since, until = window.first, window.last
    predictions: dict[str, pd.Series] = {}
    truth = None
    with ray_session(config):
        for role, model in (("challenger", challenger), ("champion", champion)):
            if model is None:
                continue
            rows = labelled_rows(archive, model.text_builder, since, until, config.object_store)
            if config.promotion.golden_set:
                golden = labelled_rows(
                    config.promotion.golden_set, model.text_builder, None, None, config.object_store
                )
                rows = pd.concat([rows, golden.assign(ticket_id="golden:" + golden["ticket_id"])])
            rows = rows.set_index("ticket_id").sort_index()
            if rows.empty:
                raise ModelError(f"no labelled tickets in {archive} between {since} and {until} to gate on")
            texts = rows["text"].tolist()
            predictions[role] = _top1(model.predict_proba_texts(texts), model, rows.index)
            truth = rows[LABEL_COLUMN]
            if model is challenger:
                baseline = baseline_for_window(config, archive, model.text_builder, candidate.train_window)
                if baseline is not None:
                    predictions["baseline"] = _top1(baseline.scores(texts, model.labels), model, rows.index)
    return truth, predictions


def _top1(scores: np.ndarray, model: TicketClassifier, index: pd.Index) -> pd.Series:
    """The best-scored tenant of each ticket, scores in ``model``'s class ids."""
    return pd.Series([model.labels.tenants[i] for i in scores.argmax(axis=1)], index=index)


def rollback(config: OncallConfig) -> tuple[str, str]:
    """Move ``champion`` back to ``previous``; returns (from version, to version). Under the
    jobs' lock."""
    with jobs_lock(config, "rollback"):
        registry = Registry(config)
        registry.finish_interrupted_promotion()
        return registry.rollback()
