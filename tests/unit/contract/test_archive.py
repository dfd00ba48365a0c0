"""Archive: partitions in a window, named problems for missing, corrupt or malformed files."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.contract.archive import Archive
from pipelines.contract.columns import REJECT_DUPLICATE_TICKET_ID, REJECT_EMPTY_TITLE
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


def test_a_partition_that_is_not_a_date_is_a_problem_of_the_windows_it_may_fall_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """check reports it with the files' problems; a listing may skip it, so that it does not stop
    the good days from being scored."""
    write_day(tmp_path, "2026-10-01", table())
    misnamed = write_day(tmp_path, "2026-02-30", table()).parent
    archive = Archive(str(tmp_path))
    with pytest.raises(ArchiveError, match=rf"^{misnamed}: '2026-02-30' is not a valid date$"):
        archive.partitions()
    assert [p.day for p in archive.partitions(misnamed="skip")] == [dt.date(2026, 10, 1)]
    assert f"ignoring {misnamed}: '2026-02-30' is not a valid date" in caplog.text
    partitions, problems = archive.check()
    assert [p.day for p in partitions] == [dt.date(2026, 10, 1)]
    assert [str(p) for p in problems] == [f"{misnamed}: '2026-02-30' is not a valid date"]
    # ISO dates compare as text: February 30th falls between February 1st and March 1st.
    assert archive.check(since=dt.date(2026, 2, 1), until=dt.date(2026, 3, 1))[1] == problems
    assert archive.check(since=dt.date(2026, 10, 1))[1] == []
    assert [p.day for p in archive.partitions(since=dt.date(2026, 10, 1))] == [dt.date(2026, 10, 1)]


def test_validate_reports_every_bad_file_and_the_rejected_rows_by_file(tmp_path: Path) -> None:
    """A file that fails past its footer is one problem, not the end of the check; a ticket id is
    unique within its day, across the day's files."""
    first = write_day(tmp_path, "2026-10-01", table())
    second = write_day(
        tmp_path, "2026-10-01", table(ticket_id=["a", "c"], title=["again", " "]), "part-1.parquet"
    )
    pages = write_day(tmp_path, "2026-10-02", table(ticket_id=[f"p{i}" for i in range(2)]))
    content = bytearray(pages.read_bytes())
    content[4:40] = b"\xff" * 36  # the first data page: the footer still reads
    pages.write_bytes(bytes(content))
    corrupt = tmp_path / "date=2026-10-03" / "part-0.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"")

    report = Archive(str(tmp_path)).validate()

    assert (report.files, report.rows, report.valid_rows) == (4, 4, 2)
    assert report.rejected == {REJECT_DUPLICATE_TICKET_ID: 1, REJECT_EMPTY_TITLE: 1}
    assert report.rejected_files == {str(second): report.rejected}
    assert str(first) not in report.rejected_files
    assert [p.source for p in report.problems] == [str(pages), str(corrupt)]
    assert all("\n" not in str(p) for p in report.problems)
    assert str(report.problems[0]).startswith(f"{pages}: not a readable Parquet file: ")
    assert (
        str(report.problems[1]) == f"{corrupt}: is not a readable Parquet file: Parquet file size is 0 bytes"
    )
    assert not report.ok


def test_read_columns_reads_only_those_and_names_a_bad_file(tmp_path: Path) -> None:
    path = write_day(tmp_path, "2026-10-01", table().drop(["tenant"]))
    archive = Archive(str(tmp_path))
    columns = archive.read_columns(str(path), ["ticket_id", "tenant"])
    assert columns.schema == pa.schema([("ticket_id", pa.string()), ("tenant", pa.string())])
    assert columns.column("tenant").null_count == 2  # an optional column the file lacks
    wrong = write_day(tmp_path, "2026-10-02", table(tenant=[1, 2]))
    with pytest.raises(ArchiveError, match=rf"^{wrong}: column 'tenant' has type int64, expected string"):
        archive.read_columns(str(wrong), ["ticket_id", "tenant"])
    empty = wrong.with_name("part-1.parquet")
    empty.write_bytes(b"")
    with pytest.raises(ArchiveError, match=rf"^{empty}: not a readable Parquet file"):
        archive.read_columns(str(empty), ["ticket_id"])


def test_the_files_behind_a_read_error_are_named_and_confirmed(tmp_path: Path) -> None:
    good = write_day(tmp_path, "2026-10-01", table())
    bad = write_day(tmp_path, "2026-10-01", table(), "part-1.parquet")
    bad.write_bytes(b"PAR1 not parquet")
    archive = Archive(str(tmp_path))
    named = archive.unreadable(OSError(f"Failed to read fragment {bad}"), [str(good), str(bad)])
    assert [(p.source, p.column) for p in named] == [(str(bad), None)]
    assert named[0].problem.startswith("not a readable Parquet file: ")
    # A message that names no file: every file is read to find it; none: not a file's fault.
    assert archive.unreadable(OSError("connection reset"), [str(good), str(bad)]) == named
    assert archive.unreadable(OSError("connection reset"), [str(good)]) == []


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
