"""Batch rescoring: counts, equality with TicketClassifier.predict, idempotence, resuming after
an interruption, two runs racing on one table, and bad input under both policies."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import OncallConfig
from pipelines.contract.columns import REJECT_EMPTY_TITLE
from pipelines.errors import ArchiveError
from pipelines.inference.rescore import RescoreRequest, rescore
from pipelines.inference.schema import TABLE_SCHEMA
from pipelines.inference.summary import MISROUTED_ARTIFACT, PartitionResult, RescoreSummary
from pipelines.inference.table import ScoredTable, ScoredTableError
from pipelines.registry.tracking import tracking_client
from pipelines.registry.versions import Registry
from pipelines.training.job import TrainResult

pytestmark = pytest.mark.usefixtures("ray_cluster")

SINCE, UNTIL = dt.date(2026, 10, 1), dt.date(2026, 10, 3)
DAYS = [SINCE + dt.timedelta(days=offset) for offset in range(3)]


def archive_rows(archive: Path, days: list[dt.date]) -> pd.DataFrame:
    return pd.concat(
        [pq.read_table(archive / f"date={day}" / "part-0.parquet").to_pandas() for day in days],
        ignore_index=True,
    )


def scored_table(config: OncallConfig, out: Path) -> ScoredTable:
    return ScoredTable.open(config, str(out))


def output_rows(config: OncallConfig, out: Path, version: str = "1") -> pd.DataFrame:
    """The scored rows of a version, read through the catalog as a pandas user would."""
    return scored_table(config, out).read(version).to_pandas()


def day_snapshots(config: OncallConfig, out: Path) -> dict[str, dict[str, str]]:
    """The newest snapshot summary of each day's commit, by day (``oncall.*`` properties)."""
    summaries = {}
    for snapshot in scored_table(config, out).load().snapshots():
        properties = snapshot.summary.additional_properties if snapshot.summary else {}
        if "oncall.date" in properties:
            summaries[properties["oncall.date"]] = properties
    return summaries


def seed_earlier_version(config: OncallConfig, out: Path, rows: pd.DataFrame) -> None:
    """Version 0's answers for ``rows`` (all 'nobody'), committed straight with pyiceberg."""
    n = len(rows)
    given = {
        "date": [rows["created_at"].dt.date.iloc[0]] * n,
        "ticket_id": rows["ticket_id"].tolist(),
        "created_at": rows["created_at"].tolist(),
        "predicted_tenant": ["nobody"] * n,
        "model_name": ["earlier"] * n,
        "model_version": ["0"] * n,
        "scored_at": [dt.datetime.now(dt.UTC)] * n,
    }
    table = pa.table({f.name: pa.array(given.get(f.name, [None] * n), f.type) for f in TABLE_SCHEMA})
    scored_table(config, out).load().append(table)


def test_rescore_matches_the_classifier_and_a_second_run_is_a_no_op(
    trained_run: tuple[OncallConfig, TrainResult], small_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    config, _ = trained_run
    archive = small_archive[0]
    out = tmp_path / "scored"
    rows = archive_rows(archive, DAYS)
    # An earlier version's answers for the first day, every prediction different.
    first_day = rows[rows["created_at"].dt.date == SINCE]
    seed_earlier_version(config, out, first_day)
    request = RescoreRequest(
        archive_uri=str(archive), out_uri=str(out), version="1", since=SINCE, until=UNTIL
    )

    summary = rescore(config, request)

    assert summary.rows_read == len(rows) == summary.rows_scored + sum(summary.rejected.values())
    assert [p.day for p in sorted(summary.partitions, key=lambda p: p.day)] == DAYS
    scored = output_rows(config, out)
    assert scored.columns.tolist() == TABLE_SCHEMA.names
    assert sorted(scored["ticket_id"]) == sorted(rows["ticket_id"])
    assert (scored["model_version"] == "1").all() and (
        scored["model_name"] == config.registry.model_name
    ).all()
    # One commit per day, its snapshot naming the run and the day's counts.
    commits = day_snapshots(config, out)
    for result in summary.partitions:
        properties = commits[result.day.isoformat()]
        assert properties["oncall.run_id"] == summary.run_id
        assert properties["oncall.model_version"] == "1"
        assert int(properties["oncall.rows"]) == result.rows
        assert int(properties["oncall.scored"]) == result.scored == (scored["date"] == result.day).sum()

    # The same answers as the inference class on the same rows.
    classifier = Registry(config).load_classifier(version="1")
    expected = classifier.predict(rows.to_dict("records"), top_k=config.evaluate.top_k)
    by_id = scored.set_index("ticket_id").loc[rows["ticket_id"]]
    assert by_id["predicted_tenant"].tolist() == [p.tenant for p in expected]
    assert by_id["confidence"].tolist() == pytest.approx([p.confidence for p in expected], abs=1e-5)
    assert by_id["abstain"].tolist() == [p.abstain for p in expected]
    assert [[item["tenant"] for item in top] for top in by_id["top_k"]] == [
        [tenant for tenant, _ in p.top_k] for p in expected
    ]
    assert by_id["current_tenant"].fillna("").tolist() == rows["tenant"].fillna("").tolist()
    misrouted = (
        rows["tenant"].notna().to_numpy()
        & (rows["tenant"].to_numpy() != by_id["predicted_tenant"].to_numpy())
        & (by_id["confidence"].to_numpy() > config.rescore.misroute_confidence)
    )
    assert by_id["misrouted"].tolist() == misrouted.tolist()
    assert summary.misrouted == int(misrouted.sum())

    # Compared with the earlier version where it scored the same day.
    first = next(p for p in summary.partitions if p.day == SINCE)
    assert (first.previous_version, first.compared, first.changed) == ("0", len(first_day), len(first_day))
    assert all(p.previous_version is None for p in summary.partitions if p.day != SINCE)

    # Logged to MLflow: metrics and the misrouted tickets.
    client = tracking_client(config)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows_scored"] == summary.rows_scored
    assert run.data.metrics["rows_misrouted"] == summary.misrouted
    csv = client.download_artifacts(summary.run_id, MISROUTED_ARTIFACT, str(tmp_path))
    assert len(pd.read_csv(csv)) == summary.misrouted

    # DuckDB reads the same rows (pyiceberg hands it the scan as Arrow).
    connection = scored_table(config, out).load().scan(row_filter="model_version == '1'").to_duckdb("scored")
    assert connection.execute("select count(*) from scored where reject_reason is null").fetchone() == (
        len(scored),
    )

    before = scored_table(config, out).load().current_snapshot()
    again = rescore(config, request)
    assert again.partitions == [] and again.rows_read == 0
    assert again.already_committed == DAYS
    assert scored_table(config, out).load().current_snapshot() == before


class InterruptedRunError(Exception):
    pass


def test_an_interrupted_run_resumes_without_duplicates(
    trained_run: tuple[OncallConfig, TrainResult],
    small_archive: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _ = trained_run
    monkeypatch.setattr("pipelines.inference.output.ROWS_PER_BLOCK", 100)  # several files per day
    out = tmp_path / "scored"
    request = RescoreRequest(
        archive_uri=str(small_archive[0]), out_uri=str(out), version="1", since=SINCE, until=UNTIL
    )
    committed: list[dt.date] = []

    def stop_after_two(result: PartitionResult) -> None:
        committed.append(result.day)
        if len(committed) == 2:
            raise InterruptedRunError

    with pytest.raises(InterruptedRunError):
        rescore(config, request, on_commit=stop_after_two)
    table = scored_table(config, out)
    assert table.committed_days("1") == set(committed)
    # What a kill during a commit leaves: data files no snapshot references, read by no one.
    data_files = sorted(Path(table.load().location().removeprefix("file://"), "data").rglob("*.parquet"))
    orphan = data_files[0].parent / "00000-0-killed-mid-commit.parquet"
    shutil.copy(data_files[0], orphan)
    rows = archive_rows(small_archive[0], DAYS)
    assert len(output_rows(config, out)) == sum(
        (rows["created_at"].dt.date == day).sum() for day in committed
    )

    resumed = rescore(config, request)

    assert resumed.already_committed == sorted(committed)
    assert [p.day for p in resumed.partitions] == sorted(set(DAYS) - set(committed))
    scored = output_rows(config, out)
    assert len(scored) == len(rows) and scored["ticket_id"].is_unique
    assert set(scored["ticket_id"]) == set(rows["ticket_id"])
    files_per_day = pd.Series(
        [task.file.partition[1] for task in table.load().scan().plan_files()]
    ).value_counts()
    assert len(files_per_day) == len(DAYS) and (files_per_day >= 2).all()


def test_a_file_arriving_in_a_scored_day_gets_that_day_scored_again(
    trained_run: tuple[OncallConfig, TrainResult], small_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    config, _ = trained_run
    archive, out = tmp_path / "archive", tmp_path / "scored"
    for day in DAYS[:2]:
        shutil.copytree(small_archive[0] / f"date={day}", archive / f"date={day}")
    request = RescoreRequest(archive_uri=str(archive), out_uri=str(out), version="1")
    first = rescore(config, request)
    assert sorted(p.day for p in first.partitions) == DAYS[:2]
    # A late upload into the first day: new tickets, same day.
    late = archive_rows(small_archive[0], DAYS[2:]).head(7)
    late = late.assign(
        ticket_id="late-" + late["ticket_id"], created_at=late["created_at"] - dt.timedelta(days=2)
    )
    pq.write_table(
        pa.Table.from_pandas(late, preserve_index=False), archive / f"date={DAYS[0]}" / "part-late.parquet"
    )

    second = rescore(config, request)

    assert second.late_files == {DAYS[0]: ["part-late.parquet"]}
    assert [p.day for p in second.partitions] == [DAYS[0]] and second.already_committed == [DAYS[1]]
    scored = output_rows(config, out)
    expected = pd.concat([archive_rows(archive, DAYS[:2]), late])
    assert scored["ticket_id"].is_unique and set(scored["ticket_id"]) == set(expected["ticket_id"])
    assert rescore(config, request).partitions == []  # the day's files are now all recorded


@pytest.mark.parametrize("days", [3, 1], ids=["three days", "one day"])
def test_two_runs_racing_on_one_table_leave_every_row_once(
    trained_run: tuple[OncallConfig, TrainResult],
    small_archive: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    days: int,
) -> None:
    """Both runs reach their first commit before either commits (a barrier in the catalog's
    commit): one commit loses the compare-and-swap, and pyiceberg re-validates it on the new
    snapshot. A commit of another day goes through; a commit of the same day (certain with one
    day) fails validation and that run stops with a ScoredTableError. No row is lost or doubled."""
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import CommitFailedException

    config, _ = trained_run
    config = config.model_copy(update={"rescore": config.rescore.model_copy(update={"actors": 1})})
    out = tmp_path / "scored"
    table = scored_table(config, out)  # created before the race: the barrier sees day commits only
    window = DAYS[:days]
    request = RescoreRequest(
        archive_uri=str(small_archive[0]), out_uri=str(out), version="1", since=SINCE, until=window[-1]
    )
    real_commit = SqlCatalog.commit_table
    first_commits = threading.Barrier(2, timeout=240)
    arrived: set[int] = set()
    lost: list[str] = []

    def racing_commit(catalog: SqlCatalog, *args: object, **kwargs: object) -> object:
        if threading.get_ident() not in arrived:
            arrived.add(threading.get_ident())
            first_commits.wait()
        try:
            return real_commit(catalog, *args, **kwargs)
        except CommitFailedException as exc:
            lost.append(str(exc))
            raise

    monkeypatch.setattr(SqlCatalog, "commit_table", racing_commit)
    outcomes: list[RescoreSummary | BaseException] = []

    def run() -> None:
        try:
            outcomes.append(rescore(config, request))
        except BaseException as exc:  # the outcome is what the test checks
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert len(outcomes) == 2, "a run did not finish"

    assert lost, "the two commits did not race"
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    for failure in failures:
        assert isinstance(failure, ScoredTableError), repr(failure)
        assert f"oncall.scored_tickets in {out.resolve().as_uri()}: another run committed" in str(failure)
        assert "model_version=1 date=2026-10-0" in str(failure)
    assert len(failures) < 2, "only a run that lost a commit of the same day stops"
    if days == 1:
        assert len(failures) == 1, "both runs committed the one day: the later commit must fail validation"
    rows = archive_rows(small_archive[0], window)
    scored = output_rows(config, out)
    assert len(scored) == len(rows) and scored["ticket_id"].is_unique
    assert set(scored["ticket_id"]) == set(rows["ticket_id"])
    assert table.committed_days("1") == set(window)
    monkeypatch.setattr(SqlCatalog, "commit_table", real_commit)
    assert rescore(config, request).partitions == []


def write_unreadable_parquet(path: Path) -> None:
    """A file whose footer reads fine but whose first data page is garbage."""
    table = pa.table(
        {
            "ticket_id": [f"BAD-{i:04d}" for i in range(300)],
            "created_at": pa.array([dt.datetime(2026, 10, 2, 12)] * 300, pa.timestamp("us")),
            "title": [f"unreadable ticket number {i} " * 3 for i in range(300)],
        }
    )
    pq.write_table(table, path)
    content = bytearray(path.read_bytes())
    content[4:260] = b"\xff" * 256
    path.write_bytes(bytes(content))
    assert pq.read_metadata(path).num_rows == 300


@pytest.fixture(scope="module")
def damaged_archive(
    tmp_path_factory: pytest.TempPathFactory, small_archive: tuple[Path, dict]
) -> tuple[Path, dict[str, Path]]:
    """Two days of the small archive plus: a corrupt file, a file missing a required column,
    a file that fails reading past its footer, and a file with empty titles (and no optional
    columns at all)."""
    root = tmp_path_factory.mktemp("damaged")
    for day in DAYS[:2]:
        shutil.copytree(small_archive[0] / f"date={day}", root / f"date={day}")
    day1, day2 = root / f"date={DAYS[0]}", root / f"date={DAYS[1]}"
    bad = {
        "corrupt": day1 / "part-1.parquet",
        "missing_title": day2 / "part-1.parquet",
        "unreadable": day2 / "part-2.parquet",
    }
    bad["corrupt"].write_bytes(b"PAR1 this is not a parquet file at all")
    stamp = pa.array([dt.datetime(2026, 10, 1, 9)] * 5, pa.timestamp("us"))  # naive: read as UTC
    pq.write_table(
        pa.table({"ticket_id": [f"M-{i}" for i in range(5)], "created_at": stamp, "tenant": ["t"] * 5}),
        bad["missing_title"],
    )
    write_unreadable_parquet(bad["unreadable"])
    pq.write_table(
        pa.table(
            {
                "ticket_id": ["E-1", "E-2", "E-3", "E-4", "E-5"],
                "created_at": stamp,
                "title": ["", "   ", None, "disk full on sg1-node-007", "payment-gateway 5xx in sg1"],
            }
        ),
        day1 / "part-2.parquet",
    )
    return root, bad


def test_bad_files_fail_names_them_before_any_work(
    trained_run: tuple[OncallConfig, TrainResult],
    damaged_archive: tuple[Path, dict[str, Path]],
    tmp_path: Path,
) -> None:
    config, _ = trained_run
    archive, bad = damaged_archive
    request = RescoreRequest(archive_uri=str(archive), out_uri=str(tmp_path), version="1", on_bad_file="fail")
    with pytest.raises(ArchiveError) as failure:
        rescore(config, request)
    assert str(bad["corrupt"]) in str(failure.value)
    assert f"{bad['missing_title']}: column 'title' is missing" in str(failure.value)
    assert scored_table(config, tmp_path).committed_days("1") == set()


def test_bad_files_skip_scores_the_rest_and_lists_them(
    trained_run: tuple[OncallConfig, TrainResult],
    damaged_archive: tuple[Path, dict[str, Path]],
    small_archive: tuple[Path, dict],
    tmp_path: Path,
) -> None:
    config, _ = trained_run
    archive, bad = damaged_archive
    request = RescoreRequest(archive_uri=str(archive), out_uri=str(tmp_path), version="1", on_bad_file="skip")

    summary = rescore(config, request)

    skipped = {item.path: item.reason for item in summary.skipped_files}
    assert set(skipped) == {str(path) for path in bad.values()}
    assert "not a readable Parquet file" in skipped[str(bad["corrupt"])]
    assert "column 'title' is missing" in skipped[str(bad["missing_title"])]
    assert "not a readable Parquet file" in skipped[str(bad["unreadable"])]
    good = len(archive_rows(small_archive[0], DAYS[:2]))
    assert summary.rows_read == good + 5
    assert summary.rejected == {REJECT_EMPTY_TITLE: 3}
    assert summary.rows_scored == good + 2
    scored = output_rows(config, tmp_path)
    assert len(scored) == good + 2 and {"E-4", "E-5"} <= set(scored["ticket_id"])
    rejected = scored_table(config, tmp_path).read("1", [DAYS[0]], rejected=True).to_pandas()
    rejected = rejected.sort_values("ticket_id")
    assert rejected["ticket_id"].tolist() == ["E-1", "E-2", "E-3"]
    assert set(rejected["reject_reason"]) == {REJECT_EMPTY_TITLE}
    # The ticket as it came (to fix it at the source), and no answer.
    assert rejected["title"].fillna("<null>").tolist() == ["", "   ", "<null>"]
    assert rejected["predicted_tenant"].isna().all()
    commit = day_snapshots(config, tmp_path)[DAYS[1].isoformat()]
    assert sorted(json.loads(commit["oncall.skipped_files"])) == sorted(
        [str(bad["missing_title"]), str(bad["unreadable"])]
    )


def test_fail_names_a_file_that_breaks_while_streaming(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    """A footer that reads fine but data that does not is only found while streaming."""
    config, _ = trained_run
    unreadable = tmp_path / "archive" / f"date={DAYS[1]}" / "part-0.parquet"
    unreadable.parent.mkdir(parents=True)
    write_unreadable_parquet(unreadable)
    request = RescoreRequest(
        archive_uri=str(tmp_path / "archive"),
        out_uri=str(tmp_path / "scored"),
        version="1",
        on_bad_file="fail",
    )
    with pytest.raises(ArchiveError, match=re.escape(f"{unreadable}: not a readable Parquet file")):
        rescore(config, request)
    assert not list((tmp_path / "scored").rglob("*.parquet"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "column 'title' is missing"),
        (["--alias", "champion"], "give an alias or a version, not both"),
    ],
)
def test_cli_errors_are_one_line(
    trained_run: tuple[OncallConfig, TrainResult],
    damaged_archive: tuple[Path, dict[str, Path]],
    tmp_path: Path,
    extra: list[str],
    message: str,
) -> None:
    config, _ = trained_run
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ONCALL_", "RAY_ADDRESS"))}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipelines.cli import main; main()",
            "--data-dir",
            str(config.data_dir),
            "rescore",
            "--archive",
            str(damaged_archive[0]),
            "--out",
            str(tmp_path),
            "--version",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "error:" in done.stderr
    assert "Traceback" not in done.stderr
