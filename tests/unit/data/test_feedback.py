"""Feedback keeps every answer; the nightly trains only on what the policy lets in; tables of
earlier releases keep working (real SQLite, and PostgreSQL when ONCALL_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipelines.config import FeedbackConfig
from pipelines.contract.archive import Archive
from pipelines.data import feedback
from pipelines.data.feedback import FeedbackStore, accepted_labels, changed_labels
from pipelines.errors import ArchiveError

T0 = dt.datetime(2026, 10, 1, 12, tzinfo=dt.UTC)


def test_every_answer_is_kept_and_the_latest_is_the_label(feedback_db_url: str) -> None:
    store = FeedbackStore(feedback_db_url)
    try:
        store.record("INC-1", "team-a", source="oncall-ui", token_id="tok-1")
        store.record("INC-1", "team-b", source="triage-bot", token_id="tok-2")
        store.record("INC-2", "team-a")
        history = store.history()
        assert history[["ticket_id", "tenant", "source", "token_id"]].fillna("-").values.tolist() == [
            ["INC-1", "team-a", "oncall-ui", "tok-1"],
            ["INC-1", "team-b", "triage-bot", "tok-2"],
            ["INC-2", "team-a", "-", "-"],
        ]
        assert history.received_at.is_monotonic_increasing and str(history.received_at.dt.tz) == "UTC"
        assert store.get("INC-1").tenant == "team-b"
        assert sorted(store.read().ticket_id) == ["INC-1", "INC-2"]  # one current row per ticket
    finally:
        store.close()


LEGACY_DDL = (
    "CREATE TABLE routing_feedback (ticket_id VARCHAR(256) PRIMARY KEY, tenant VARCHAR(256) NOT NULL, "
    "source VARCHAR(128), received_at TIMESTAMP{zone} NOT NULL)"
)


def test_a_feedback_table_of_an_earlier_release_is_read_as_history(feedback_db_url: str) -> None:
    engine = sa.create_engine(feedback_db_url)
    zone = " WITH TIME ZONE" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as connection:  # what the previous release created and wrote
        connection.execute(sa.text(LEGACY_DDL.format(zone=zone)))
        connection.execute(
            sa.text("INSERT INTO routing_feedback VALUES (:t, :tenant, :s, :at)"),
            [
                {"t": "OLD-1", "tenant": "team-a", "s": "oncall-ui", "at": T0},
                {"t": "OLD-2", "tenant": "team-b", "s": None, "at": T0 + dt.timedelta(minutes=1)},
            ],
        )
    engine.dispose()
    store = FeedbackStore(feedback_db_url)
    try:
        assert store.history()[["ticket_id", "tenant"]].values.tolist() == [
            ["OLD-1", "team-a"],
            ["OLD-2", "team-b"],
        ]
        store.record("OLD-1", "team-c", source="oncall-ui")
        history = store.history()
        assert history[["ticket_id", "tenant"]].values.tolist() == [
            ["OLD-2", "team-b"],  # the legacy answer still standing
            ["OLD-1", "team-c"],  # the new one (the legacy OLD-1 row was replaced in place, as before)
        ]
        assert store.get("OLD-1").tenant == "team-c" and len(store.read()) == 2
        labels = store.labels({"team-b", "team-c"}, FeedbackConfig())
        assert labels.accepted == {"OLD-2": "team-b", "OLD-1": "team-c"}
    finally:
        store.close()


def answers(*rows: tuple[str, str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            (ticket, tenant, source, None, T0 + dt.timedelta(minutes=i))
            for i, (ticket, tenant, source) in enumerate(rows)
        ],
        columns=["ticket_id", "tenant", "source", "token_id", "received_at"],
    )


def test_a_new_tenant_is_held_until_enough_tickets_or_a_second_source_confirm_it() -> None:
    hold = FeedbackConfig(new_tenants="hold", confirmations=3)
    history = answers(
        ("T1", "team-known", "ui"),
        ("T2", "team-typo", "ui"),
        ("T3", "team-typo", "ui"),
        ("T4", "team-two-sources", "ui"),
        ("T5", "team-two-sources", "bot"),
        ("T6", "team-many", None),
        ("T7", "team-many", None),
        ("T8", "team-many", None),
        ("T9", "team-typo", "ui"),
        ("T9", "team-known", "ui"),  # corrected: the latest answer is the label
    )
    labels = accepted_labels(history, {"team-known"}, hold)
    assert labels.accepted == {
        "T1": "team-known",
        "T4": "team-two-sources",
        "T5": "team-two-sources",
        "T6": "team-many",
        "T7": "team-many",
        "T8": "team-many",
        "T9": "team-known",
    }
    assert labels.held == {"team-typo": 2} and labels.rejected == {}
    rejected = accepted_labels(history, {"team-known"}, FeedbackConfig(new_tenants="reject"))
    assert rejected.accepted == {"T1": "team-known", "T9": "team-known"}
    assert rejected.rejected == {"team-typo": 2, "team-two-sources": 2, "team-many": 3}
    everything = accepted_labels(history, set(), FeedbackConfig(new_tenants="accept"))
    assert len(everything.accepted) == 9 and not everything.held


def test_changed_labels_counts_only_tickets_whose_archive_label_differs(tmp_path: Path) -> None:
    for day, rows in (("2026-10-01", [("A", "team-a"), ("B", "team-b")]), ("2026-10-02", [("C", None)])):
        folder = tmp_path / f"date={day}"
        folder.mkdir()
        table = pa.table(
            {
                "ticket_id": [r[0] for r in rows],
                "tenant": pa.array([r[1] for r in rows], pa.string()),
                "title": ["t"] * len(rows),
                "created_at": pa.array([dt.datetime(2026, 10, 1, tzinfo=dt.UTC)] * len(rows)),
            }
        )
        pq.write_table(table, folder / "part-0.parquet")
    archive = Archive(str(tmp_path))
    labels = {"A": "team-a", "B": "team-x", "C": "team-c", "unknown-ticket": "team-a"}
    assert changed_labels(archive, dt.date(2026, 10, 2), labels) == 2  # B relabelled, C resolved
    assert changed_labels(archive, dt.date(2026, 10, 1), labels) == 1
    assert changed_labels(archive, dt.date(2026, 10, 2), {}) == 0


def test_an_answer_that_commits_after_a_newer_one_does_not_become_the_label(
    feedback_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([T0 + dt.timedelta(minutes=2), T0 + dt.timedelta(minutes=1)])
    monkeypatch.setattr(feedback, "_now", lambda: next(clock))
    store = FeedbackStore(feedback_db_url)
    try:
        store.record("INC-9", "team-newer")
        store.record("INC-9", "team-older")  # received earlier, committed later (a slow replica)
        assert store.get("INC-9").tenant == "team-newer"
        assert store.history().tenant.tolist() == ["team-older", "team-newer"]  # both kept, by time
        assert store.labels({"team-newer", "team-older"}, FeedbackConfig()).accepted == {
            "INC-9": "team-newer"
        }
    finally:
        store.close()


def test_changed_labels_names_a_broken_file_and_reads_one_without_labels(tmp_path: Path) -> None:
    day = tmp_path / "archive" / "date=2026-10-01"
    day.mkdir(parents=True)
    created = pa.array([dt.datetime(2026, 10, 1, tzinfo=dt.UTC)])
    pq.write_table(
        pa.table({"ticket_id": ["A"], "title": ["t"], "created_at": created}), day / "unlabelled.parquet"
    )
    archive = Archive(str(tmp_path / "archive"))
    assert changed_labels(archive, dt.date(2026, 10, 1), {"A": "team-a"}) == 1  # no owner in the archive
    (day / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ArchiveError, match=r"broken\.parquet: not a readable Parquet file"):
        changed_labels(archive, dt.date(2026, 10, 1), {"A": "team-a"})
