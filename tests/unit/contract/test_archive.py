"""Archive: partitions in a window, named problems for missing, corrupt or malformed files."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.contract.archive import Archive
from pipelines.errors import ArchiveError
from tests.unit.contract.test_rows import table


def write_day(root: Path, day: str, data: pa.Table, name: str = "part-0.parquet") -> Path:
    folder = root / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, folder / name)
    return folder / name


def test_partitions_are_listed_in_the_window_oldest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for day in ("2026-10-03", "2026-10-01", "2026-10-02"):
        write_day(tmp_path, day, table())
    (tmp_path / "notes").mkdir()
    (tmp_path / "date=2026-10-04").mkdir()  # empty day: no files, not listed
    days = [p.day.isoformat() for p in Archive(str(tmp_path)).partitions()]
    assert days == ["2026-10-01", "2026-10-02", "2026-10-03"]
    window = Archive(str(tmp_path)).partitions(since=dt.date(2026, 10, 2), until=dt.date(2026, 10, 2))
    assert [p.day for p in window] == [dt.date(2026, 10, 2)]
    assert "notes" in caplog.text


def test_metadata_files_in_the_root_are_skipped_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_day(tmp_path, "2026-10-01", table())
    for name in ("_manifest.json", "manifest.json", "_SUCCESS", ".DS_Store", "notes.txt"):
        (tmp_path / name).write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert [p.day for p in Archive(str(tmp_path)).partitions()] == [dt.date(2026, 10, 1)]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "notes.txt" in warned[0]  # metadata files are not warned about


def test_missing_archive_and_bad_partition_date_are_named(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        Archive(str(tmp_path / "nowhere")).partitions()
    (tmp_path / "date=2026-13-45").mkdir()
    with pytest.raises(ArchiveError, match="'2026-13-45' is not a valid date"):
        Archive(str(tmp_path)).partitions()


def test_check_archive_names_corrupt_files_and_bad_columns(tmp_path: Path) -> None:
    write_day(tmp_path, "2026-10-01", table())
    bad_columns = write_day(tmp_path, "2026-10-02", table().drop(["title"]))
    corrupt = tmp_path / "date=2026-10-03" / "part-0.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PAR1 this is not parquet")
    partitions, problems = Archive(str(tmp_path)).check()
    assert len(partitions) == 3
    messages = [str(p) for p in problems]
    assert f"{bad_columns}: column 'title' is missing (required)" in messages
    assert any(m.startswith(f"{corrupt}: is not a readable Parquet file") for m in messages)
    with pytest.raises(ArchiveError, match=str(corrupt)):
        Archive(str(tmp_path)).read_file(str(corrupt))
