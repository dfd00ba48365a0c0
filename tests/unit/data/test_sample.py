from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.contract.archive import Archive
from pipelines.data.sample.generator import (
    LEGACY_MANIFEST_NAME,
    MANIFEST_NAME,
    SampleSpec,
    generate_archive,
    read_manifest,
)
from pipelines.errors import ArchiveError
from tests.conftest import SMALL_SPEC

CJK = re.compile(r"[\u4e00-\u9fff]")


def read_all(archive: Path) -> pd.DataFrame:
    frames = []
    for partition in Archive(str(archive)).partitions():
        for path in partition.files:
            frames.append(pq.read_table(path).to_pandas().assign(day=partition.day))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def tickets(small_archive: tuple[Path, dict]) -> pd.DataFrame:
    return read_all(small_archive[0])


def test_layout_counts_and_contract(small_archive: tuple[Path, dict], tickets: pd.DataFrame) -> None:
    archive, manifest = small_archive
    partitions, problems = Archive(str(archive)).check()
    assert problems == []
    assert len(partitions) == SMALL_SPEC.days
    assert tickets.groupby("day").size().tolist() == [SMALL_SPEC.tickets_per_day] * SMALL_SPEC.days
    assert manifest["tickets"] == len(tickets)
    assert tickets["ticket_id"].is_unique
    assert (tickets["created_at"].dt.date == tickets["day"]).all()  # each ticket in its own day
    assert tickets["tenant"].dropna().str.fullmatch(r"\d{5}").all()  # numeric-looking string ids


def test_same_seed_same_archive_other_seed_other_archive(tmp_path: Path, tickets: pd.DataFrame) -> None:
    again = tmp_path / "again"
    generate_archive(SMALL_SPEC, again)
    pd.testing.assert_frame_equal(read_all(again), tickets)
    other = tmp_path / "other"
    generate_archive(dataclasses.replace(SMALL_SPEC, seed=8), other)
    assert not read_all(other)["title"].equals(tickets["title"])


def test_ownership_moves_relabel_the_service_from_the_move_date(
    small_archive: tuple[Path, dict], tickets: pd.DataFrame
) -> None:
    moves = small_archive[1]["ownership_moves"]
    assert len(moves) == SMALL_SPEC.moves
    for move in moves:
        day = dt.date.fromisoformat(move["date"])
        labelled = tickets[(tickets["service"] == move["service"]) & tickets["tenant"].notna()]
        before, after = labelled[labelled["day"] < day], labelled[labelled["day"] >= day]
        assert len(before) >= 5 and len(after) >= 5, move
        assert (before["tenant"] == move["from"]).mean() > 0.85, move
        assert (after["tenant"] == move["to"]).mean() > 0.85, move


def test_new_tenants_and_their_services_appear_only_from_their_date(
    small_archive: tuple[Path, dict], tickets: pd.DataFrame
) -> None:
    new = small_archive[1]["new_tenants"]
    assert len(new) == SMALL_SPEC.new_tenants
    for tenant in new:
        day = dt.date.fromisoformat(tenant["date"])
        assert SMALL_SPEC.start < day <= SMALL_SPEC.end
        own = tickets[tickets["service"].isin(tenant["services"])]
        assert (own["day"] >= day).all()
        assert (tickets.loc[tickets["tenant"] == tenant["tenant"], "day"] >= day).all()
        assert (own["tenant"] == tenant["tenant"]).sum() >= 5


def test_realistic_mix(small_archive: tuple[Path, dict], tickets: pd.DataFrame) -> None:
    counts = tickets["tenant"].value_counts()
    assert counts.iloc[0] > 5 * counts.median()  # long-tailed volume
    has_cjk = tickets["title"].str.contains(CJK)
    assert 0.3 < has_cjk.mean() < 0.8  # bilingual
    assert tickets["service"].isna().mean() > 0.05  # the text must carry the signal sometimes
    unresolved_by_day = tickets["tenant"].isna().groupby(tickets["day"]).mean()
    assert unresolved_by_day.iloc[0] > 0
    assert unresolved_by_day.iloc[-1] > 3 * unresolved_by_day.iloc[0]  # recent days not yet resolved
    assert tickets["description"].str.len().max() > 1000  # long descriptions exist
    manifest_tenants = {t["tenant"] for t in small_archive[1]["tenants"]}
    assert set(tickets["tenant"].dropna()) <= manifest_tenants


def test_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    spec = dataclasses.replace(SMALL_SPEC, days=2, tickets_per_day=20)
    generate_archive(spec, tmp_path / "archive")
    with pytest.raises(ArchiveError, match="--overwrite"):
        generate_archive(spec, tmp_path / "archive")
    generate_archive(dataclasses.replace(spec, days=1), tmp_path / "archive", overwrite=True)
    assert len(Archive(str(tmp_path / "archive")).partitions()) == 1  # the older day was replaced
    (tmp_path / "archive" / "keep.txt").write_text("not ours")
    with pytest.raises(ArchiveError, match="not empty"):
        generate_archive(spec, tmp_path / "archive", overwrite=True)
    assert (tmp_path / "archive" / MANIFEST_NAME).is_file()  # nothing removed on refusal


def test_the_archive_root_reads_as_a_hive_dataset_with_pyarrow_and_duckdb(
    small_archive: tuple[Path, dict],
) -> None:
    archive, manifest = small_archive
    assert (archive / MANIFEST_NAME).is_file() and not (archive / LEGACY_MANIFEST_NAME).exists()
    table = ds.dataset(archive, partitioning="hive").to_table(columns=["ticket_id", "date"])
    per_day = table.group_by("date").aggregate([("ticket_id", "count")]).to_pylist()
    assert table.num_rows == manifest["tickets"]
    assert {str(row["date"]): row["ticket_id_count"] for row in per_day} == manifest["tickets_per_day"]
    glob = f"{archive}/**/*.parquet"
    rows = duckdb.sql(
        f"select cast(date as varchar) as day, count(*) as n from read_parquet('{glob}', "
        "hive_partitioning=true) group by all order by day"
    ).fetchall()
    assert dict(rows) == manifest["tickets_per_day"]


def test_an_archive_with_the_old_manifest_name_is_still_read_and_overwritten(tmp_path: Path) -> None:
    spec = dataclasses.replace(SMALL_SPEC, days=2, tickets_per_day=20)
    archive = tmp_path / "archive"
    written = generate_archive(spec, archive)
    (archive / MANIFEST_NAME).rename(archive / LEGACY_MANIFEST_NAME)  # as generated before the rename
    assert read_manifest(archive) == written
    generate_archive(dataclasses.replace(spec, days=1), archive, overwrite=True)
    assert sorted(p.name for p in archive.iterdir()) == [MANIFEST_NAME, "date=2026-10-01"]
    with pytest.raises(ArchiveError, match=f"{MANIFEST_NAME} does not exist"):
        read_manifest(tmp_path)


def test_invalid_spec_is_named() -> None:
    with pytest.raises(ArchiveError, match="days must be >= 1"):
        SampleSpec(days=0)
    with pytest.raises(ArchiveError, match="label_noise"):
        SampleSpec(label_noise=0.7)
