"""Batch rescoring: counts, equality with TicketClassifier.predict, idempotence, resuming after
an interruption, and bad input under both policies."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import OncallConfig
from pipelines.contract.columns import REJECT_EMPTY_TITLE
from pipelines.errors import ArchiveError
from pipelines.inference.output import MARKER, REJECTED_DIR, SCORED_SCHEMA
from pipelines.inference.rescore import RescoreRequest, rescore
from pipelines.inference.summary import MISROUTED_ARTIFACT, PartitionResult
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


def output_rows(out: Path, version: str = "1") -> pd.DataFrame:
    return pq.read_table(out / f"model_version={version}").to_pandas()


def committed_files(out: Path) -> dict[str, int]:
    return {str(path): path.stat().st_mtime_ns for path in sorted(out.rglob("*")) if path.is_file()}


def test_rescore_matches_the_classifier_and_a_second_run_is_a_no_op(
    trained_run: tuple[OncallConfig, TrainResult], small_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    config, _ = trained_run
    archive = small_archive[0]
    out = tmp_path / "scored"
    rows = archive_rows(archive, DAYS)
    # An earlier version's output of the first day, every prediction different.
    earlier = out / "model_version=0" / f"date={SINCE}"
    earlier.mkdir(parents=True)
    first_day = rows[rows["created_at"].dt.date == SINCE]
    pq.write_table(
        pa.table({"ticket_id": first_day["ticket_id"], "predicted_tenant": ["nobody"] * len(first_day)}),
        earlier / "part-00000.parquet",
    )
    (earlier / MARKER).write_text("{}")
    request = RescoreRequest(
        archive_uri=str(archive), out_uri=str(out), version="1", since=SINCE, until=UNTIL
    )

    summary = rescore(config, request)

    assert summary.rows_read == len(rows) == summary.rows_scored + sum(summary.rejected.values())
    assert [p.day for p in sorted(summary.partitions, key=lambda p: p.day)] == DAYS
    scored = output_rows(out)
    assert [name for name in scored.columns if name != "date"] == SCORED_SCHEMA.names
    assert sorted(scored["ticket_id"]) == sorted(rows["ticket_id"])
    assert (scored["model_version"] == "1").all() and (
        scored["model_name"] == config.registry.model_name
    ).all()
    for day in DAYS:
        assert (out / "model_version=1" / f"date={day}" / MARKER).is_file()
    assert not list((out / "model_version=1").glob(".tmp-*"))

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

    before = committed_files(out)
    again = rescore(config, request)
    assert again.partitions == [] and again.rows_read == 0
    assert again.already_committed == DAYS
    assert committed_files(out) == before


class InterruptedRunError(Exception):
    pass


def test_an_interrupted_run_resumes_without_duplicates(
    trained_run: tuple[OncallConfig, TrainResult],
    small_archive: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _ = trained_run
    monkeypatch.setattr("pipelines.inference.output.ROWS_PER_FILE", 100)  # several files per day
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
    version_dir = out / "model_version=1"
    assert sorted(path.parent.name for path in version_dir.glob(f"*/{MARKER}")) == sorted(
        f"date={day}" for day in committed
    )
    # What a kill leaves too: a day moved into place without its marker, a temp dir mid-write.
    (version_dir / f"date={committed[0]}" / MARKER).unlink()
    leftover = version_dir / ".tmp-date=2026-10-03-deadbeef"
    leftover.mkdir()
    shutil.copy(next((version_dir / f"date={committed[1]}").glob("part-*.parquet")), leftover)

    resumed = rescore(config, request)

    assert resumed.already_committed == [committed[1]]
    assert sorted(p.day for p in resumed.partitions) == sorted(set(DAYS) - {committed[1]})
    rows = archive_rows(small_archive[0], DAYS)
    scored = output_rows(out)
    assert len(scored) == len(rows) and scored["ticket_id"].is_unique
    assert set(scored["ticket_id"]) == set(rows["ticket_id"])
    assert not leftover.exists()
    assert all((version_dir / f"date={day}" / MARKER).is_file() for day in DAYS)
    assert all(len(list((version_dir / f"date={day}").glob("part-*.parquet"))) >= 2 for day in DAYS)


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
    assert not list(tmp_path.rglob(MARKER))


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
    scored = output_rows(tmp_path)
    assert len(scored) == good + 2 and {"E-4", "E-5"} <= set(scored["ticket_id"])
    rejected = pq.read_table(tmp_path / "model_version=1" / f"date={DAYS[0]}" / REJECTED_DIR).to_pandas()
    assert sorted(rejected["ticket_id"]) == ["E-1", "E-2", "E-3"]
    assert set(rejected["reject_reason"]) == {REJECT_EMPTY_TITLE}
    marker = json.loads((tmp_path / "model_version=1" / f"date={DAYS[1]}" / MARKER).read_text())
    assert sorted(marker["skipped_files"]) == sorted([str(bad["missing_title"]), str(bad["unreadable"])])


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
