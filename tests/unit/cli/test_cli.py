"""The console script as a user runs it: real process, real files, exit codes and messages."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main

from pipelines.cli import DEMO_OVERLAY, app
from pipelines.cli.options import option_help
from pipelines.config import OncallConfig, field_doc, load_config

CLI = [sys.executable, "-c", "from pipelines.cli import main; main()"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**environ, **(env or {})}, timeout=120
    )


def test_sample_data_then_validate(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    done = run(
        "--data-dir",
        str(tmp_path),
        "sample-data",
        "--out",
        str(archive),
        "--days",
        "3",
        "--tickets-per-day",
        "50",
        "--tenants",
        "10",
        "--moves",
        "1",
        "--new-tenants",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert "150" in done.stdout and "ownership move" in done.stdout
    assert json.loads((archive / "_manifest.json").read_text())["tickets"] == 150

    checked = run("validate", "--archive", str(archive))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid rows" in checked.stdout


def test_validate_names_bad_files_and_counts_rejected_rows(tmp_path: Path) -> None:
    good = pa.table(
        {
            "ticket_id": ["a", "b", "c"],
            "created_at": pa.array([0, 0, 0], pa.timestamp("us")),
            "title": ["disk full", "", None],
        }
    )
    for day, data in (("2026-10-01", good), ("2026-10-02", good.drop(["title"]))):
        (tmp_path / f"date={day}").mkdir()
        pq.write_table(data, tmp_path / f"date={day}" / "part-0.parquet")
    done = run("validate", "--archive", str(tmp_path))
    assert done.returncode == 1
    assert re.search(r"rejected: empty_title\s*│\s*2\b", done.stdout), done.stdout
    assert "date=2026-10-02/part-0.parquet: column 'title' is missing (required)" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["validate", "--archive", "/nonexistent/archive"],
            {},
            "archive /nonexistent/archive does not exist",
        ),
        (["validate"], {"ONCALL_TRAIN__EPOCHZ": "3"}, "train.epochz: unknown key"),
        (["--config", "/nonexistent.yaml", "validate"], {}, "config file /nonexistent.yaml does not exist"),
    ],
)
def test_user_errors_are_one_clear_line_without_traceback(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run(*args, env=env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_refusing_to_overwrite_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    done = run("sample-data", "--out", str(tmp_path), "--days", "1", "--tickets-per-day", "5")
    assert done.returncode == 2 and "is not empty" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_serve_on_a_busy_port_is_a_clear_error_before_ray_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("--data-dir", str(tmp_path), "serve", "--port", str(port))
    assert done.returncode == 2
    assert f"serve.port: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "Started a local Ray" not in done.stderr


def test_schedule_with_an_invalid_cron_is_one_line_before_anything_heavy(tmp_path: Path) -> None:
    done = run("--data-dir", str(tmp_path), "schedule", "--cron", "not a cron")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nightly.cron" in errors[0] and "'not a cron'" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "next fire" not in done.stdout


def config_options() -> dict[tuple[str, str], tuple[str, object]]:
    """(command, option name) → (help, default) of every option whose help names a config key."""
    group = typer.main.get_command(app)
    commands = {"": group, **group.commands}  # "": the global options
    return {
        (name, param.name): (param.help, param.default)
        for name, command in commands.items()
        for param in command.params
        if "[config " in (getattr(param, "help", None) or "")
    }


def test_config_options_take_help_and_default_from_the_field() -> None:
    options = config_options()
    assert {("train", "epochs"), ("serve", "port"), ("schedule", "cron"), ("", "data_dir")} <= set(options)
    assert options["train", "epochs"][0] == "Training epochs. [config train.epochs; default 3]"
    for (command, name), (help_text, default) in options.items():
        key = re.search(r"\[config ([\w.]+)", help_text).group(1)
        assert help_text.startswith(field_doc(key).description + " [config "), (command, name)
        assert help_text == option_help(key), (command, name)
        assert default is None, f"{command} --{name}: None lets the config decide"


def test_the_demo_overlay_changes_only_what_it_names(tmp_path: Path) -> None:
    demo = load_config(DEMO_OVERLAY, environ={})
    assert demo.train.epochs == 2 and demo.model.max_length == 64
    assert demo.train.lr == OncallConfig().train.lr  # only what the overlay names changes
    user_file = tmp_path / "user.yaml"
    user_file.write_text("train:\n  epochs: 4\n")
    user = load_config(DEMO_OVERLAY, user_file, environ={})
    assert user.train.epochs == 4 and user.model.max_length == 64  # the user's file wins


def test_version_prints_the_package_version() -> None:
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"oncall-router {importlib.metadata.version('oncall-router')}\n"


def small_sample(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    archive = tmp_path / "archive"
    return run(
        *options,
        "--data-dir",
        str(tmp_path),
        "sample-data",
        "--out",
        str(archive),
        "--days",
        "2",
        "--tickets-per-day",
        "20",
        "--tenants",
        "5",
    )


def only_json(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """stdout of a --json command: one JSON object and nothing else."""
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def test_json_results_are_one_object_on_stdout_with_logs_on_stderr(tmp_path: Path) -> None:
    made = small_sample(tmp_path, "--json")
    assert made.returncode == 0, made.stderr
    result = only_json(made)
    assert result["archive"] == str(tmp_path / "archive") and result["manifest"]["tickets"] == 40
    assert "wrote " in made.stderr  # the generator's log lines

    checked = run("--json", "validate", "--archive", str(tmp_path / "archive"))
    report = only_json(checked)
    assert checked.returncode == 0 and report["ok"] is True  # a property of the report, too
    assert report["rows"] == 40 and report["days"] == 2 and report["problems"] == []


def test_a_failing_validation_is_json_too_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "date=2026-10-01").mkdir()
    pq.write_table(pa.table({"ticket_id": ["a"]}), tmp_path / "date=2026-10-01" / "part-0.parquet")
    done = run("--json", "validate", "--archive", str(tmp_path))
    assert done.returncode == 1
    report = only_json(done)
    assert report["ok"] is False and "title" in json.dumps(report["problems"])


def test_json_log_lines_parse_with_time_level_logger_and_message(tmp_path: Path) -> None:
    done = small_sample(tmp_path, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert entries, "sample-data logs a line per day"
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    assert any(e["logger"] == "pipelines.data.sample.generator" and e["level"] == "INFO" for e in entries)
    assert "ownership move" in done.stdout  # the human result is unchanged


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--log-level", "WARNING"], {}),
        ([], {"ONCALL_LOG_LEVEL": "warning"}),
        ([], {"ONCALL_LOGGING__LEVEL": "ERROR"}),
    ],
)
def test_the_log_level_is_an_option_and_a_config_key(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    done = run(
        *args,
        "--data-dir",
        str(tmp_path),
        "sample-data",
        "--out",
        str(tmp_path / "a"),
        "--days",
        "1",
        "--tickets-per-day",
        "5",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr and "wrote " not in done.stderr


def test_an_unknown_log_level_is_one_clear_error() -> None:
    done = run("--log-level", "loud", "validate")
    assert done.returncode == 2
    assert "logging.level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'" in done.stderr
    assert "Traceback" not in done.stderr
