"""The nightly fails loudly (an unreachable registry is an error, not "no champion yet"; an
archive day that is not a date is one line naming it) and trains only on the feedback the policy
accepts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive
from pipelines.data.feedback import FeedbackStore
from pipelines.errors import RegistryError
from pipelines.jobs.nightly import NightlyRequest, _NightlyRun, describe, run_nightly
from pipelines.registry.versions import CHAMPION, Registry
from tests.unit.registry.jobs_cli import NO_RETRIES, closed_port_uri, config_at, error_lines, run_cli


def test_an_unreachable_registry_fails_the_nightly_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in NO_RETRIES.items():
        monkeypatch.setenv(name, value)
    config = config_at(tmp_path, **{"registry.tracking_uri": closed_port_uri()})
    with pytest.raises(RegistryError, match="reading registered model 'oncall-router' failed"):
        run_nightly(config, NightlyRequest(date=dt.date(2026, 10, 9)))


def test_an_archive_day_that_is_not_a_date_is_one_line_naming_it(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    (archive / "date=2026-02-30").mkdir(parents=True)
    (archive / "date=2026-02-30" / "part-0.parquet").write_bytes(b"")
    done = run_cli(
        "--data-dir", str(tmp_path / "data"), "nightly", "--date", "2026-03-01", "--archive", str(archive)
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert error_lines(done) == [f"error: {archive / 'date=2026-02-30'}: '2026-02-30' is not a valid date"]
    assert "Traceback" not in done.stderr


def champion_knowing(config: OncallConfig, tenants: list[str], folder: Path) -> None:
    """A champion version whose model directory holds only its labels (all the nightly reads here)."""
    classifier = folder / "model" / "artifacts" / "classifier"
    classifier.mkdir(parents=True)
    (classifier / "labels.json").write_text(json.dumps({"tenants": tenants}))
    registry = Registry(config)
    registry.client.create_registered_model(registry.name)
    version = registry.client.create_model_version(registry.name, source=(folder / "model").as_uri())
    registry.set_alias(CHAMPION, str(version.version))


def test_the_nightly_trains_on_feedback_the_policy_accepts_and_counts_what_it_changed(tmp_path: Path) -> None:
    archive = tmp_path / "archive" / "date=2026-10-01"
    archive.mkdir(parents=True)
    tickets = {"A": "team-a", "B": "team-a", "C": "team-b"}
    created = pa.array([dt.datetime(2026, 10, 1, tzinfo=dt.UTC)] * len(tickets))
    table = pa.table(
        {
            "ticket_id": list(tickets),
            "tenant": list(tickets.values()),
            "title": ["t"] * 3,
            "created_at": created,
        }
    )
    pq.write_table(table, archive / "p.parquet")
    config = config_at(tmp_path / "data", **{"data.archive": str(archive.parent)})
    champion_knowing(config, ["team-a", "team-b"], tmp_path / "champion")
    store = FeedbackStore(config.feedback_db_url)
    store.record("A", "team-a", source="ui")  # agrees with the archive
    store.record("B", "team-b", source="ui")  # a known tenant: changes B's label
    store.record("C", "team-typo", source="ui")  # a tenant the champion does not know: held
    store.close()
    day = dt.date(2026, 10, 1)
    run = _NightlyRun(config, NightlyRequest(date=day), Archive(str(archive.parent)), [day])
    run._ingest_feedback(None)
    assert run.overrides == {"A": "team-a", "B": "team-b"}
    summary = run.summary
    assert (summary.feedback_labels, summary.feedback_changed, summary.feedback_held) == (3, 1, 1)
    assert describe(summary)["labels changed by feedback"] == 1


def test_a_rescore_window_without_partitions_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_at(tmp_path / "data", **{"nightly.rescore_days": 2})
    champion_knowing(config, ["team-a"], tmp_path / "champion")
    archive = tmp_path / "archive"
    (archive / "date=2026-10-01").mkdir(parents=True)
    run = _NightlyRun(
        config, NightlyRequest(date=dt.date(2026, 10, 9)), Archive(str(archive)), [dt.date(2026, 10, 1)]
    )
    run._rescore()  # nothing between 2026-10-08 and 2026-10-09: no rescore (it would raise)
    assert run.summary.rescored_rows == 0
    assert "rescore skipped: " in caplog.text and "between 2026-10-08 and 2026-10-09" in caplog.text
