"""Label-free quality of a version, read from a real scored table (Iceberg, SQLite catalog):
abstain rate, mean confidence of routed tickets, accuracy where archive or feedback labels exist,
and the drops the nightly flags."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.inference.quality import VersionQuality, quality_drops, version_quality
from pipelines.inference.schema import TABLE_SCHEMA
from pipelines.inference.table import ScoredTable
from tests.unit.registry.jobs_cli import config_at

DAY = dt.date(2026, 10, 1)


def scored(table: ScoredTable, version: str, rows: list[tuple[str, str, float, bool, str | None]]) -> None:
    """Rows of (ticket, predicted tenant, confidence, abstain, archive label) for ``version``."""
    given = {
        "date": [DAY] * len(rows),
        "ticket_id": [r[0] for r in rows],
        "predicted_tenant": [r[1] for r in rows],
        "confidence": [r[2] for r in rows],
        "abstain": [r[3] for r in rows],
        "current_tenant": [r[4] for r in rows],
        "model_version": [version] * len(rows),
    }
    columns = {f.name: pa.array(given.get(f.name, [None] * len(rows)), f.type) for f in TABLE_SCHEMA}
    table.load().append(pa.table(columns, schema=TABLE_SCHEMA))


def test_quality_of_a_version_from_its_scored_rows(tmp_path: Path) -> None:
    table = ScoredTable.open(config_at(tmp_path), str(tmp_path / "scored"))
    scored(
        table,
        "2",
        [
            ("t1", "a", 0.9, False, "a"),  # routed, right
            ("t2", "b", 0.7, False, "a"),  # routed, wrong
            ("t3", "a", 0.8, False, None),  # routed, unlabelled; feedback says b
            ("t4", "c", 0.2, True, "c"),  # abstained: not in the accuracies
        ],
    )
    scored(table, "1", [("t1", "z", 0.1, False, "a")])  # another version: not counted

    quality = version_quality(table, "2", [DAY], {"t3": "b", "t1": "a", "t9": "a"})

    assert quality.tickets == 4 and quality.abstain_rate == 0.25
    assert quality.mean_confidence == pytest.approx(0.8, abs=1e-6)
    assert quality.labelled_accuracy == 0.5
    assert (quality.feedback_accuracy, quality.feedback_tickets) == (0.5, 2)
    assert quality.as_metrics()["quality_abstain_rate"] == 0.25


def test_drops_beyond_the_margin_are_named_and_missing_figures_ignored() -> None:
    before = VersionQuality(100, 0.10, 0.80, 0.90, math.nan, 0).as_metrics()
    now = VersionQuality(100, 0.30, 0.78, 0.70, 0.5, 10)
    assert quality_drops(now, before, margin=0.05) == [
        "abstain_rate 0.100 → 0.300",
        "labelled_accuracy 0.900 → 0.700",
    ]
    assert quality_drops(now, {}, margin=0.05) == []
