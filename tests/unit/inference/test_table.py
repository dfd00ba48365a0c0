"""The scored table without Ray: creation, where it lives, committed days, reads, the summary's
reads from it, on SQLite, PostgreSQL (ONCALL_TEST_POSTGRES_URL) and an S3 warehouse (moto)."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.config import OncallConfig, load_config
from pipelines.inference.schema import PARTITION_COLUMNS, TABLE_SCHEMA
from pipelines.inference.summary import (
    PartitionResult,
    RescoreSummary,
    compare_with_previous,
    report_misroutes,
)
from pipelines.inference.table import ScoredTable, ScoredTableError, catalog_uri
from tests.integration.mlflow_server import postgres_url_or_skip, scratch_database

DAY, NEXT = dt.date(2026, 10, 1), dt.date(2026, 10, 2)


def config_for(data_dir: Path, **overrides: object) -> OncallConfig:
    return load_config(environ={}, overrides={"data_dir": data_dir, **overrides})


def rows(
    version: str, day: dt.date, tenants: list[str], *, rejected: int = 0, current: str = "a"
) -> pa.Table:
    """Scored rows (``T-<i>``, predicted ``tenants[i]``, misrouted where it differs from
    ``current``) and ``rejected`` rows (``R-<i>``, empty title)."""
    scored, n = len(tenants), len(tenants) + rejected
    given = {
        "date": [day] * n,
        "ticket_id": [f"T-{i}" for i in range(scored)] + [f"R-{i}" for i in range(rejected)],
        "created_at": [dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.UTC)] * n,
        "title": [f"ticket {i}" for i in range(scored)] + [""] * rejected,
        "service": ["db"] * n,
        "current_tenant": [current] * n,
        "predicted_tenant": tenants + [None] * rejected,
        "confidence": [0.9] * scored + [None] * rejected,
        "abstain": [False] * scored + [None] * rejected,
        "misrouted": [tenant != current for tenant in tenants] + [None] * rejected,
        "reject_reason": [None] * scored + ["empty_title"] * rejected,
        "model_name": ["router"] * n,
        "model_version": [version] * n,
        "scored_at": [dt.datetime.now(dt.UTC)] * n,
    }
    return pa.table({f.name: pa.array(given.get(f.name, [None] * n), f.type) for f in TABLE_SCHEMA})


def test_open_creates_the_partitioned_table_beside_its_catalog_and_reopens_it(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    table = ScoredTable.open(config)

    assert (tmp_path / "scored" / "catalog.db").is_file()
    loaded = table.load()
    assert loaded.location().startswith((tmp_path / "scored").resolve().as_uri())
    assert [field.name for field in loaded.spec().fields] == list(PARTITION_COLUMNS)
    assert [field.name for field in loaded.schema().fields] == TABLE_SCHEMA.names
    assert ScoredTable.open(config) == table
    assert table.committed_days("1") == set()
    assert str(table) == f"oncall.scored_tickets in {(tmp_path / 'scored').resolve().as_uri()}"


def test_committed_days_versions_and_reads(tmp_path: Path) -> None:
    table = ScoredTable.open(config_for(tmp_path))
    loaded = table.load()
    loaded.append(rows("1", DAY, ["a", "b"], rejected=1))
    loaded.append(rows("2", DAY, ["a", "a"]))
    loaded.append(rows("2", NEXT, [], rejected=2))  # a day of rejected rows only is committed too

    assert table.committed_days("1") == {DAY}
    assert table.committed_days("2") == {DAY, NEXT}
    assert table.committed_days("3") == set()
    assert table.versions_of(DAY) == {"1", "2"} and table.versions_of(NEXT) == {"2"}
    assert sorted(table.read("1")["ticket_id"].to_pylist()) == ["T-0", "T-1"]
    assert table.read("1", rejected=True)["ticket_id"].to_pylist() == ["R-0"]
    assert table.read("2", [NEXT]).num_rows == 0 and table.read("2", [NEXT], rejected=True).num_rows == 2
    assert table.read("2", [DAY], columns=["ticket_id"]).column_names == ["ticket_id"]

    # A day whose rows are deleted is scored again by the next run.
    loaded.delete("model_version == '2' AND date == '2026-10-02'")
    assert table.committed_days("2") == {DAY}


def test_the_summary_compares_with_the_previous_version_and_reads_misroutes_back(tmp_path: Path) -> None:
    table = ScoredTable.open(config_for(tmp_path))
    loaded = table.load()
    loaded.append(rows("1", DAY, ["a", "b", "c"]))
    loaded.append(rows("3", DAY, ["a", "a", "b", "d"], rejected=1))  # version 2 never scored the day
    loaded.append(rows("4", DAY, ["z"]))  # a later version is not "previous"
    result = PartitionResult(DAY, rows=5)

    compare_with_previous(table, "3", result)

    assert (result.previous_version, result.compared, result.changed) == ("1", 3, 2)
    untouched = PartitionResult(NEXT, rows=1)
    compare_with_previous(table, "3", untouched)
    assert untouched.previous_version is None and untouched.compared == 0

    summary = RescoreSummary("archive", str(table), "router", "3", "fail", partitions=[result])
    csv = tmp_path / "misrouted.csv"
    report_misroutes(table, summary, csv)
    assert summary.misrouted_moves == {"a → b": 1, "a → d": 1}
    assert summary.misrouted_services == {"db": 2}
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("date,ticket_id,created_at,service,title,current_tenant,predicted_tenant")
    assert len(lines) == 3 and all(line.startswith("2026-10-01,T-") for line in lines[1:])


def test_a_table_the_catalog_keeps_elsewhere_is_an_error(tmp_path: Path) -> None:
    shared = f"sqlite:///{tmp_path}/shared.db"
    ScoredTable.open(config_for(tmp_path, **{"rescore.catalog_uri": shared}), str(tmp_path / "first"))
    with pytest.raises(ScoredTableError, match=r"lives at .*first.*not under .*second"):
        ScoredTable.open(config_for(tmp_path, **{"rescore.catalog_uri": shared}), str(tmp_path / "second"))
    other = config_for(tmp_path, **{"rescore.catalog_uri": shared, "rescore.table": "oncall.other"})
    assert ScoredTable.open(other, str(tmp_path / "second")).identifier == "oncall.other"


def test_catalog_uri_defaults(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    assert catalog_uri(config, str(tmp_path / "out")) == f"sqlite:///{tmp_path.resolve()}/out/catalog.db"
    assert catalog_uri(config, "s3://bucket/scored") == f"sqlite:///{tmp_path.resolve()}/scored-catalog.db"
    configured = config_for(tmp_path, **{"rescore.catalog_uri": "postgresql+psycopg://u:secret@db/cat"})
    assert catalog_uri(configured, "s3://bucket/scored") == "postgresql+psycopg://u:secret@db/cat"


def test_a_postgresql_catalog(tmp_path: Path) -> None:
    with scratch_database(postgres_url_or_skip()) as url:
        config = config_for(tmp_path, **{"rescore.catalog_uri": url})
        table = ScoredTable.open(config)
        table.load().append(rows("1", DAY, ["a", "b"]))
        assert ScoredTable.open(config).committed_days("1") == {DAY}
        assert table.read("1").num_rows == 2
        table.catalog.engine.dispose()  # let the scratch database go


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 on loopback with a bucket ``scored``; dummy credentials."""
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="scored")
        yield endpoint
    finally:
        server.stop()


def test_an_s3_warehouse_through_the_configured_endpoint(tmp_path: Path, s3_endpoint: str) -> None:
    config = config_for(tmp_path, **{"storage.endpoint_url": s3_endpoint, "storage.region": "us-east-1"})
    table = ScoredTable.open(config, "s3://scored/warehouse")

    assert table.load().location().startswith("s3://scored/warehouse/")
    assert (tmp_path / "scored-catalog.db").is_file()
    table.load().append(rows("1", DAY, ["a", "b"], rejected=1))
    assert ScoredTable.open(config, "s3://scored/warehouse").committed_days("1") == {DAY}
    assert table.read("1", rejected=True)["ticket_id"].to_pylist() == ["R-0"]
    filesystem, path = config.object_store.resolve("s3://scored/warehouse")
    from pyarrow.fs import FileSelector

    written = filesystem.get_file_info(FileSelector(path, recursive=True))
    assert any(info.path.endswith(".parquet") for info in written)
