"""An adversarial archive through the commands, run as a user runs them.

The archive holds, next to a week of good tickets: a file of random bytes, a truncated file, a
0-byte file, a file whose data pages are garbage behind a good footer, a file missing
``created_at``, a file whose tenant is an integer column, a file whose ``created_at`` is text, a
``date=2026-02-30`` directory, and files that keep the contract but not the row rules or the
usual types: null and blank titles, null, blank and duplicate ticket ids (within a file and
across the day's files), a 1 MB description, control characters, ``timestamp[ms, tz=UTC]``,
naive ``timestamp[us]``, ``timestamp[ns, tz=Europe/Paris]``, a dictionary-encoded tenant and a
0-row file.

``validate`` names every bad file and column (exit 1). ``train`` refuses a window that breaks the
contract, naming every bad file (exit 2), and trains on the rest of a window whose files keep it,
counting the rejected rows by reason. ``rescore --on-bad-file fail`` names the bad files and
commits no day that holds one; ``skip`` scores everything else (per day: rows read = scored +
rejected) and names the skipped files. ``nightly`` stops on the contract error, naming the files.
Never a traceback, and no good row lost.

Commands run through the console script's ``main`` in this process (so the jobs join the
session's Ray instead of starting one each), ``validate`` as a real process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import random
import re
import shutil
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main, render
from pipelines.config import load_config
from pipelines.contract.columns import (
    REJECT_DUPLICATE_TICKET_ID,
    REJECT_EMPTY_TITLE,
    REJECT_NULL_TICKET_ID,
)
from pipelines.data.sample.generator import SampleSpec, generate_archive
from pipelines.inference.table import ScoredTable

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

SPEC = SampleSpec(
    days=7, tickets_per_day=60, tenants=6, new_tenants=0, moves=0, start=dt.date(2026, 10, 1), seed=3
)
DAYS = [SPEC.start + dt.timedelta(days=offset) for offset in range(SPEC.days)]
UTC_MS = pa.timestamp("ms", tz="UTC")
# What the row rules reject in part-rows.parquet, by construction.
REJECTED = {REJECT_NULL_TICKET_ID: 2, REJECT_EMPTY_TITLE: 2, REJECT_DUPLICATE_TICKET_ID: 2}
# Small enough for a quick run of the tiny base (a --config file, as a user would give it).
SMALL_CONFIG = """\
model: {{base: {base}, max_length: 64}}
data: {{max_description_chars: 120}}
train: {{epochs: 1, batch_size: 32}}
logging: {{progress_interval_s: 0}}
"""


# A line the session's Ray forwards from a worker: "(MapWorker(...) pid=123, ip=…) …".
RAY_WORKER_LINE = re.compile(r"^(\x1b\[[\d;]*m)?\(.*? pid=\d+(, ip=[\d.]+)?\)")
CLI = [sys.executable, "-c", "from pipelines.cli import main; main()"]


@dataclass(frozen=True)
class Adversarial:
    root: Path  # every file, good and bad
    clean: Path  # the same without the files that break the contract
    bad: dict[str, Path]  # kind → the file (or directory) that breaks it


@dataclass(frozen=True)
class Outcome:
    code: int | str  # the exit code, or "crash" when an exception escaped the command
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def day_dir(root: Path, day: dt.date) -> Path:
    folder = root / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stamps(day: dt.date, n: int, arrow_type: pa.DataType) -> pa.Array:
    start = dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC if arrow_type.tz else None)
    return pa.array([start + dt.timedelta(minutes=i) for i in range(n)], arrow_type)


def tickets(prefix: str, day: dt.date, n: int, tenant: str, stamp: pa.DataType = UTC_MS) -> pa.Table:
    return pa.table(
        {
            "ticket_id": [f"{prefix}-{i}" for i in range(n)],
            "created_at": stamps(day, n, stamp),
            "title": [f"{prefix} payment-gateway 5xx after deploy {i}" for i in range(n)],
            "service": ["payment-gateway"] * n,
            "tenant": [tenant] * n,
        }
    )


def write_row_problems(folder: Path, day: dt.date, tenant: str, taken_id: str) -> None:
    """Rows that keep the schema but not the row rules, and text no tokenizer should see raw."""
    rows = {
        "ticket_id": [
            *("R-ok", "R-ctrl", "R-long", "R-null-title", "R-blank-title", None, "  "),
            *("R-dup", "R-dup", taken_id),
        ],
        "created_at": stamps(day, 10, UTC_MS),
        "title": [
            "disk full on node-7",
            "\x00\x07disk\x1b[31m full\x7f on\x85 node-8\u200b",
            "huge description",
            None,
            " \t\n ",
            "no id",
            "blank id",
            "first of a duplicate",
            "second of a duplicate",
            "the id of a ticket in another file of the day",
        ],
        "description": [None, "line\x0bbreak\x0c and \x1f units", "x" * 1_000_000, *[None] * 7],
        "tenant": [tenant] * 10,
    }
    pq.write_table(pa.table(rows), folder / "part-rows.parquet")


def write_not_utf8(path: Path, tenant: str) -> None:
    """Titles whose bytes are not UTF-8: Parquet says strings are, an unchecked writer may not."""
    data = b"Invalid \xff\xfe bytes on node-1" + b"fine title" + b"cut \xe2\x82 euro"
    ends = [0, 27, 37, len(data)]
    offsets = pa.py_buffer(pa.array(ends, pa.int32()).buffers()[1])
    titles = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(data)])
    rows = tickets("B", DAYS[4], 3, tenant)
    pq.write_table(rows.set_column(2, "title", titles), path)


def write_unreadable_pages(path: Path, tenant: str) -> None:
    """A file whose footer reads fine but whose first data page is garbage."""
    n = 300
    pq.write_table(tickets("U", DAYS[3], n, tenant), path)
    content = bytearray(path.read_bytes())
    content[4:260] = b"\xff" * 256
    path.write_bytes(bytes(content))
    assert pq.read_metadata(path).num_rows == n


def write_contract_breakers(root: Path, tenant: str) -> dict[str, Path]:
    bad = {
        "random_bytes": day_dir(root, DAYS[1]) / "part-random.parquet",
        "truncated": day_dir(root, DAYS[2]) / "part-truncated.parquet",
        "no_created_at": day_dir(root, DAYS[3]) / "part-no-created-at.parquet",
        "unreadable_pages": day_dir(root, DAYS[3]) / "part-pages.parquet",
        "int_tenant": day_dir(root, DAYS[4]) / "part-int-tenant.parquet",
        "text_created_at": day_dir(root, DAYS[5]) / "part-text-time.parquet",
        "zero_bytes": day_dir(root, DAYS[-1] + dt.timedelta(days=1)) / "part-0.parquet",
        "bad_date": root / "date=2026-02-30",
    }
    bad["random_bytes"].write_bytes(random.Random(0).randbytes(4096))
    whole = (root / f"date={DAYS[2]}" / "part-0.parquet").read_bytes()
    bad["truncated"].write_bytes(whole[: len(whole) // 2])
    pq.write_table(tickets("C", DAYS[3], 3, tenant).drop(["created_at"]), bad["no_created_at"])
    write_unreadable_pages(bad["unreadable_pages"], tenant)
    ints = tickets("I", DAYS[4], 3, tenant)
    pq.write_table(ints.set_column(4, "tenant", pa.array([1, 2, 3])), bad["int_tenant"])
    text = tickets("S", DAYS[5], 3, tenant)
    pq.write_table(
        text.set_column(1, "created_at", pa.array(["2026-10-06T09:00:00Z"] * 3)), bad["text_created_at"]
    )
    bad["zero_bytes"].write_bytes(b"")
    bad["bad_date"].mkdir()
    pq.write_table(tickets("F", DAYS[0], 3, tenant), bad["bad_date"] / "part-0.parquet")
    return bad


def build_archive(root: Path) -> dict[str, Path]:
    """The good week, the files that bend the contract without breaking it, then the breakers."""
    generate_archive(SPEC, root)
    first = pq.read_table(root / f"date={DAYS[0]}" / "part-0.parquet")
    tenant = first["tenant"].drop_null()[0].as_py()
    write_row_problems(day_dir(root, DAYS[0]), DAYS[0], tenant, first["ticket_id"][0].as_py())
    naive = tickets("N", DAYS[1], 5, tenant, pa.timestamp("us"))
    pq.write_table(
        naive.set_column(4, "tenant", naive["tenant"].dictionary_encode()),
        root / f"date={DAYS[1]}" / "part-naive.parquet",
    )
    schema = first.schema
    pq.write_table(schema.empty_table(), root / f"date={DAYS[2]}" / "part-empty.parquet")
    paris = tickets("P", DAYS[2], 3, tenant, pa.timestamp("ns", tz="Europe/Paris"))
    pq.write_table(paris, root / f"date={DAYS[2]}" / "part-paris.parquet")
    write_not_utf8(root / f"date={DAYS[4]}" / "part-not-utf8.parquet", tenant)
    return write_contract_breakers(root, tenant)


def copy_without(source: Path, target: Path, left_out: list[Path]) -> Path:
    shutil.copytree(source, target)
    for path in left_out:
        copied = target / path.relative_to(source)
        if copied.is_dir():
            shutil.rmtree(copied)
        else:
            copied.unlink()
        if not any(copied.parent.iterdir()):
            copied.parent.rmdir()
    return target


def python_values(column: pa.ChunkedArray) -> list[object]:
    """A column's values; text decoded with replacement (pandas cannot hold bytes that are not
    UTF-8)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not pa.types.is_string(column.type):
        return column.to_pylist()
    return [v if v is None else v.decode("utf-8", "replace") for v in column.cast(pa.binary()).to_pylist()]


def good_rows(archive: Path) -> pd.DataFrame:
    """Every row of the clean archive's files, with its day, read straight with pyarrow."""
    frames = []
    for path in sorted(archive.glob("date=*/*.parquet")):
        table = pq.read_table(path)
        columns = {name: python_values(table.column(name)) for name in table.column_names}
        day = dt.date.fromisoformat(path.parent.name.removeprefix("date="))
        frames.append(pd.DataFrame(columns, columns=table.column_names).assign(day=day))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> Adversarial:
    root = tmp_path_factory.mktemp("adversarial") / "archive"
    bad = build_archive(root)
    clean = copy_without(root, root.with_name("clean"), list(bad.values()))
    return Adversarial(root, clean, bad)


@pytest.fixture(scope="module")
def cli_options(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> list[str]:
    """The global options of every command here: a fresh data dir (MLflow, the scored table)
    and a config file for a small, quick model on the session's tiny base."""
    data_dir = tmp_path_factory.mktemp("oncall")
    config_file = data_dir / "small.yaml"
    config_file.write_text(SMALL_CONFIG.format(base=json.dumps(str(tiny_base))))
    return ["--data-dir", str(data_dir), "--config", str(config_file)]


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """A command sets up logging for its process, and ``--json`` points the CLI's console at
    stderr: put the test process's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        render.console.file = None  # type: ignore[assignment]  # rich: follow sys.stdout again


def oncall_router(options: list[str], *args: str) -> Outcome:
    """The console script's entry point in this process: its exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | str
    argv = ["oncall-router", *options, *args]
    with process_state_restored(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        saved, sys.argv = sys.argv, argv
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        except Exception:  # what a user would see as a traceback: the failure the suite looks for
            code = "crash"
            stderr.write(traceback.format_exc())
        finally:
            sys.argv = saved
    return Outcome(code, stdout.getvalue(), stderr.getvalue())


def assert_named_problems(text: str, adversarial: Adversarial, kinds: list[str]) -> None:
    """Each bad file of ``kinds`` named with its problem (and column, where it is a column's)."""
    bad = adversarial.bad
    expected = {
        "random_bytes": f"{bad['random_bytes']}: is not a readable Parquet file: Parquet magic bytes not found",
        "truncated": f"{bad['truncated']}: is not a readable Parquet file: Parquet magic bytes not found",
        "zero_bytes": f"{bad['zero_bytes']}: is not a readable Parquet file: Parquet file size is 0 bytes",
        "unreadable_pages": f"{bad['unreadable_pages']}: not a readable Parquet file: ",
        "no_created_at": f"{bad['no_created_at']}: column 'created_at' is missing (required)",
        "int_tenant": f"{bad['int_tenant']}: column 'tenant' has type int64, expected string",
        "text_created_at": f"{bad['text_created_at']}: column 'created_at' has type string, expected a timestamp",
        "bad_date": f"{bad['bad_date']}: '2026-02-30' is not a valid date",
    }
    for kind in kinds:
        assert expected[kind] in text, f"{kind} not named:\n{text}"


def assert_no_traceback(outcome: Outcome) -> None:
    """No exception escaped the command and no traceback was logged. Lines the session's Ray
    forwards from its workers are left out: a command's own Ray keeps them in its log files."""
    assert outcome.code != "crash", outcome.stderr
    lines = (outcome.stdout + outcome.stderr).splitlines()
    shown = "\n".join(line for line in lines if not RAY_WORKER_LINE.match(line))
    assert "Traceback" not in shown, shown


def committed_days(options: list[str], out: Path) -> set[dt.date]:
    config = load_config(environ={}, overrides={"data_dir": Path(options[1])})
    return ScoredTable.open(config, str(out)).committed_days("1")


FOOTER_PROBLEMS = [
    "random_bytes",
    "truncated",
    "zero_bytes",
    "no_created_at",
    "int_tenant",
    "text_created_at",
    "bad_date",
]


def test_validate_names_every_bad_file_and_column(adversarial: Adversarial) -> None:
    done = subprocess.run(
        [*CLI, "validate", "--archive", str(adversarial.root)], capture_output=True, text=True, timeout=120
    )
    outcome = Outcome(done.returncode, done.stdout, done.stderr)

    assert outcome.code == 1, outcome.stdout + outcome.stderr
    assert_no_traceback(outcome)
    assert_named_problems(outcome.stdout, adversarial, [*FOOTER_PROBLEMS, "unreadable_pages"])
    problems = [line for line in outcome.stdout.splitlines() if "problem: " in line]
    assert len(problems) == len(adversarial.bad), "one line per bad file, nothing else"
    as_json = subprocess.run(
        [*CLI, "--json", "validate", "--archive", str(adversarial.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False
    assert report["rejected"] == REJECTED
    assert report["rejected_files"] == {
        str(adversarial.root / f"date={DAYS[0]}" / "part-rows.parquet"): REJECTED
    }
    assert {p["source"]: p["column"] for p in report["problems"]} == {
        **{str(path): None for path in adversarial.bad.values()},
        str(adversarial.bad["no_created_at"]): "created_at",
        str(adversarial.bad["int_tenant"]): "tenant",
        str(adversarial.bad["text_created_at"]): "created_at",
    }
    assert report["rows"] == len(good_rows(adversarial.clean))


@pytest.fixture(scope="module")
def trained(adversarial: Adversarial, cli_options: list[str]) -> dict:
    """``train`` on the files that keep the contract (version 1, the one rescore uses)."""
    outcome = oncall_router(cli_options, "--json", "train", "--archive", str(adversarial.clean))
    assert outcome.code == 0, outcome.stderr
    assert_no_traceback(outcome)
    return json.loads(outcome.stdout)


def expected_scored_ids(archive: Path) -> set[str]:
    """The ids a run must score: rows of the archive's files the row rules accept (a ticket id
    once per day)."""
    rows = good_rows(archive)
    ids, titles = rows["ticket_id"].astype("string").str.strip(), rows["title"].astype("string").str.strip()
    valid = rows[ids.notna() & (ids != "") & titles.notna() & (titles != "")]
    return set(valid.drop_duplicates(["day", "ticket_id"])["ticket_id"])


def test_train_uses_the_good_rows_and_counts_the_rejected_ones(
    adversarial: Adversarial, trained: dict
) -> None:
    stats = trained["stats"]
    rows = good_rows(adversarial.clean)
    assert stats["rows"] == len(rows)
    assert stats["rejected"][REJECT_NULL_TICKET_ID] == REJECTED[REJECT_NULL_TICKET_ID]
    assert stats["rejected"][REJECT_EMPTY_TITLE] == REJECTED[REJECT_EMPTY_TITLE]
    # Ticket ids are unique within a batch of the pipeline: the file's own duplicate always.
    assert stats["rejected"][REJECT_DUPLICATE_TICKET_ID] >= 1
    labelled = sum(stats["labelled"].values())
    assert labelled + sum(stats["rejected"].values()) + stats["unresolved"] == len(rows)
    assert trained["version"] == "1"


def test_train_refuses_a_window_that_breaks_the_contract_naming_every_file(
    adversarial: Adversarial, cli_options: list[str], trained: dict
) -> None:
    outcome = oncall_router(cli_options, "train", "--archive", str(adversarial.root))

    assert outcome.code == 2, outcome.stderr
    assert_no_traceback(outcome)
    assert outcome.error_lines == ["error: the archive breaks the ticket contract:"]
    assert_named_problems(outcome.stderr, adversarial, FOOTER_PROBLEMS)


def test_train_names_a_file_that_fails_past_its_footer(
    adversarial: Adversarial, cli_options: list[str], tmp_path: Path, trained: dict
) -> None:
    """A real process, with its own Ray: what its console shows is what a user sees."""
    archive = copy_without(
        adversarial.root,
        tmp_path / "archive",
        [path for kind, path in adversarial.bad.items() if kind != "unreadable_pages"],
    )
    done = subprocess.run(
        [*CLI, *cli_options, "train", "--archive", str(archive)], capture_output=True, text=True, timeout=300
    )
    outcome = Outcome(done.returncode, done.stdout, done.stderr)

    assert outcome.code == 2, outcome.stderr
    assert outcome.error_lines == ["error: the archive breaks the ticket contract:"]
    pages = archive / adversarial.bad["unreadable_pages"].relative_to(adversarial.root)
    assert f"  {pages}: not a readable Parquet file: " in outcome.stderr
    assert_no_traceback(outcome)


def test_rescore_fail_names_the_bad_files_and_commits_nothing(
    adversarial: Adversarial, cli_options: list[str], tmp_path: Path, trained: dict
) -> None:
    out = tmp_path / "scored"
    outcome = oncall_router(
        cli_options,
        "rescore",
        "--archive",
        str(adversarial.root),
        "--out",
        str(out),
        "--version",
        "1",
        "--on-bad-file",
        "fail",
    )

    assert outcome.code == 2, outcome.stderr
    assert_no_traceback(outcome)
    assert outcome.error_lines == [
        "error: the archive breaks the ticket contract (--on-bad-file skip scores the rest):"
    ]
    assert_named_problems(outcome.stderr, adversarial, FOOTER_PROBLEMS)
    assert committed_days(cli_options, out) == set()


def test_rescore_fail_on_a_file_that_fails_past_its_footer_commits_no_bad_day(
    adversarial: Adversarial, cli_options: list[str], tmp_path: Path, trained: dict
) -> None:
    archive = copy_without(
        adversarial.root,
        tmp_path / "archive",
        [path for kind, path in adversarial.bad.items() if kind != "unreadable_pages"],
    )
    out = tmp_path / "scored"
    outcome = oncall_router(
        cli_options,
        "rescore",
        "--archive",
        str(archive),
        "--out",
        str(out),
        "--version",
        "1",
        "--on-bad-file",
        "fail",
    )

    assert outcome.code == 2, outcome.stderr
    pages = archive / adversarial.bad["unreadable_pages"].relative_to(adversarial.root)
    [error] = outcome.error_lines
    assert error.startswith(f"error: {pages}: not a readable Parquet file: ")
    assert error.endswith("(--on-bad-file skip scores the rest)")
    assert DAYS[3] not in committed_days(cli_options, out)
    assert_no_traceback(outcome)


def day_lines(stdout: str) -> dict[dt.date, tuple[int, int, int]]:
    """``date D: R rows, S scored, J rejected, …`` lines of the rescore summary."""
    lines = {}
    for line in stdout.splitlines():
        if line.startswith("date "):
            day, counts = line.removeprefix("date ").split(": ", 1)
            rows, scored, rejected = (int(part.split()[0]) for part in counts.split(", ")[:3])
            lines[dt.date.fromisoformat(day)] = (rows, scored, rejected)
    return lines


def test_rescore_skip_scores_every_good_row_and_names_the_skipped_files(
    adversarial: Adversarial, cli_options: list[str], tmp_path: Path, trained: dict
) -> None:
    out = tmp_path / "scored"
    outcome = oncall_router(
        cli_options,
        "rescore",
        "--archive",
        str(adversarial.root),
        "--out",
        str(out),
        "--version",
        "1",
        "--on-bad-file",
        "skip",
    )

    assert outcome.code == 0, outcome.stderr
    skipped = [line for line in outcome.stdout.splitlines() if line.startswith("skipped file: ")]
    assert len(skipped) == len(adversarial.bad)
    assert_named_problems("\n".join(skipped), adversarial, [*FOOTER_PROBLEMS, "unreadable_pages"])
    # Per day: rows read = scored + rejected = the rows of the day's readable files.
    rows_per_day = good_rows(adversarial.clean).groupby("day").size().to_dict()
    per_day = day_lines(outcome.stdout)
    assert {day: rows for day, (rows, _, _) in per_day.items()} == rows_per_day
    assert all(rows == scored + rejected for rows, scored, rejected in per_day.values())
    for reason, count in REJECTED.items():
        assert re.search(rf"rejected: {reason}\s*│\s*{count}\s", outcome.stdout), reason
    # Nothing good lost: the table holds every valid row once, the rejected ones with a reason.
    config = load_config(environ={}, overrides={"data_dir": Path(cli_options[1])})
    table = ScoredTable.open(config, str(out))
    assert table.committed_days("1") == set(DAYS)
    scored = table.read("1").to_pandas()
    assert scored["ticket_id"].is_unique
    assert set(scored["ticket_id"]) == expected_scored_ids(adversarial.clean)
    rejected = table.read("1", rejected=True).to_pandas()
    assert Counter(rejected["reject_reason"].dropna()) == REJECTED
    assert_no_traceback(outcome)


def test_nightly_stops_on_the_archive_problems_naming_them(
    adversarial: Adversarial, cli_options: list[str], tmp_path: Path, trained: dict
) -> None:
    """A day that is not a date stops it before Ray starts; then the files that break the
    contract stop its training step, every one named."""
    nightly = ["nightly", "--date", DAYS[-1].isoformat(), "--archive"]
    outcome = oncall_router(cli_options, *nightly, str(adversarial.root))

    assert outcome.code == 2, outcome.stderr
    assert_no_traceback(outcome)
    assert outcome.error_lines == [f"error: {adversarial.bad['bad_date']}: '2026-02-30' is not a valid date"]

    archive = copy_without(adversarial.root, tmp_path / "archive", [adversarial.bad["bad_date"]])
    outcome = oncall_router(cli_options, *nightly, str(archive))

    assert outcome.code == 2, outcome.stderr
    assert_no_traceback(outcome)
    assert outcome.error_lines == ["error: the archive breaks the ticket contract:"]
    moved = Adversarial(
        archive, archive, {k: archive / p.relative_to(adversarial.root) for k, p in adversarial.bad.items()}
    )
    # The nightly's window ends on its date: the 0-byte file of the day after is not in it.
    in_window = [kind for kind in FOOTER_PROBLEMS if kind not in ("zero_bytes", "bad_date")]
    assert_named_problems(outcome.stderr, moved, in_window)
    assert str(moved.bad["zero_bytes"]) not in outcome.stderr


def test_a_skipped_file_once_repaired_is_scored_by_the_next_run(
    adversarial: Adversarial, cli_options: list[str], tmp_path: Path, trained: dict
) -> None:
    """A skipped file is not one the day was scored from: when it is fixed, the day is scored
    again (as for a file that arrived late), else its good rows would never be scored."""
    archive = tmp_path / "archive"
    shutil.copytree(adversarial.root / f"date={DAYS[1]}", archive / f"date={DAYS[1]}")
    out = tmp_path / "scored"
    command = ["rescore", "--archive", str(archive), "--out", str(out), "--version", "1"]
    first = oncall_router(cli_options, *command, "--on-bad-file", "skip")
    assert first.code == 0, first.stderr
    repaired = archive / adversarial.bad["random_bytes"].relative_to(adversarial.root)
    assert f"skipped file: {repaired}: " in first.stdout
    pq.write_table(tickets("FIXED", DAYS[1], 4, "tenant-of-the-repair"), repaired)

    second = oncall_router(cli_options, *command, "--on-bad-file", "fail")

    assert second.code == 0, second.stderr
    assert DAYS[1] in day_lines(second.stdout), "the day of the repaired file was not scored again"
    config = load_config(environ={}, overrides={"data_dir": Path(cli_options[1])})
    scored = ScoredTable.open(config, str(out)).read("1", [DAYS[1]]).to_pandas()
    assert {f"FIXED-{i}" for i in range(4)} <= set(scored["ticket_id"])
    assert scored["ticket_id"].is_unique
