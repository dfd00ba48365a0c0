"""What a version keeps: the gate's record and its day windows, read back from tags."""

from __future__ import annotations

import datetime as dt

from pipelines.contract.days import DayWindow
from pipelines.registry.versions import GateRecord, VersionRef, window_params


def test_a_gate_record_round_trips_through_version_tags() -> None:
    record = GateRecord(
        decision="rejected",
        reasons=("top-1 0.700 is below the champion's 0.800", "recall of 1 tenant(s) drops"),
        champion="3",
        regressions=[{"tenant": "team-a", "support": 40, "champion_recall": 0.9, "challenger_recall": 0.5}],
        new_tenants={"team-new": 0.25},
    )
    tags = record.as_tags()
    assert all(key.startswith("gate.") for key in tags)
    assert GateRecord.from_tags(tags) == record
    assert not GateRecord.from_tags(tags).promoted


def test_a_version_never_gated_has_no_record_and_cut_json_reads_as_empty() -> None:
    assert GateRecord.from_tags({"run_id": "abc"}) is None
    tags = GateRecord(decision="promoted", reasons=("ok",), champion=None).as_tags()
    tags["gate.regressions"] = '[{"tenant": "team-a", "supp'  # cut to fit a tag
    record = GateRecord.from_tags(tags)
    assert record is not None and record.promoted and record.regressions == [] and record.champion is None


def test_windows_written_as_params_are_read_back_from_the_version() -> None:
    train = DayWindow(dt.date(2026, 10, 1), dt.date(2026, 10, 20))
    validation = DayWindow(dt.date(2026, 10, 21), dt.date(2026, 10, 22))
    test = DayWindow(dt.date(2026, 10, 23), dt.date(2026, 10, 24))
    tags = window_params(train, validation, test)
    ref = VersionRef(name="m", version="1", run_id="r", source="s", tags=tags, aliases=())
    assert (ref.train_window, ref.test_window) == (train, test)
    assert VersionRef(name="m", version="2", run_id="r", source="s", tags={}, aliases=()).test_window is None
