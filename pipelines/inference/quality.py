"""How a serving version does on recent tickets, most of which have no label yet.

Read from the scored table (what ``rescore`` wrote for the version): the abstain rate, and the
mean confidence of the routed tickets, an estimate of their accuracy that needs no label once
the confidence is calibrated (``TicketClassifier`` applies the version's temperature). Where
labels exist, measured accuracy next to it: on tickets the archive resolved (``current_tenant``)
and on tickets that feedback labelled (the latest answer per ticket).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import pyarrow.compute as pc

from pipelines.inference.schema import CURRENT_TENANT_COLUMN
from pipelines.inference.table import ScoredTable

COLUMNS = ("ticket_id", "predicted_tenant", "confidence", "abstain", CURRENT_TENANT_COLUMN)


@dataclass(frozen=True)
class VersionQuality:
    """One version on some days; NaN where there was nothing to measure."""

    tickets: int
    abstain_rate: float
    mean_confidence: float  # of routed (not abstained) tickets
    labelled_accuracy: float  # routed tickets the archive resolved
    feedback_accuracy: float  # routed tickets that feedback labelled
    feedback_tickets: int

    def as_metrics(self, prefix: str = "quality_") -> dict[str, float]:
        return {f"{prefix}{name}": float(value) for name, value in asdict(self).items()}


def version_quality(
    table: ScoredTable, version: str, days: Iterable[dt.date], feedback: Mapping[str, str]
) -> VersionQuality:
    """``version``'s scored rows of ``days`` against ``feedback`` (ticket → tenant)."""
    rows = table.read(version, list(days), columns=COLUMNS)
    routed = rows.filter(pc.invert(rows["abstain"]))
    right = pc.equal(routed["predicted_tenant"], routed[CURRENT_TENANT_COLUMN])
    labelled = pc.sum(pc.is_valid(routed[CURRENT_TENANT_COLUMN])).as_py() or 0
    with_feedback = [
        (feedback[ticket], predicted)
        for ticket, predicted in zip(
            routed["ticket_id"].to_pylist(), routed["predicted_tenant"].to_pylist(), strict=True
        )
        if ticket in feedback
    ]
    return VersionQuality(
        tickets=rows.num_rows,
        abstain_rate=_share(rows.num_rows - routed.num_rows, rows.num_rows),
        mean_confidence=pc.mean(routed["confidence"]).as_py() if routed.num_rows else math.nan,
        labelled_accuracy=_share(pc.sum(right).as_py() or 0, labelled),
        feedback_accuracy=_share(
            sum(label == predicted for label, predicted in with_feedback), len(with_feedback)
        ),
        feedback_tickets=len(with_feedback),
    )


def quality_drops(
    now: VersionQuality, before: Mapping[str, float], margin: float, prefix: str = "quality_"
) -> list[str]:
    """What fell by more than ``margin`` since ``before`` (an earlier :meth:`as_metrics`): the
    abstain rate rising, the mean confidence or a measured accuracy falling."""
    drops = []
    for name, worse_when_higher in (
        ("abstain_rate", True),
        ("mean_confidence", False),
        ("labelled_accuracy", False),
        ("feedback_accuracy", False),
    ):
        value, earlier = getattr(now, name), before.get(f"{prefix}{name}", math.nan)
        if math.isnan(value) or math.isnan(earlier):
            continue
        change = value - earlier if worse_when_higher else earlier - value
        if change > margin:
            drops.append(f"{name} {earlier:.3f} → {value:.3f}")
    return drops


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan
