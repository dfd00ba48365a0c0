"""Log setup of a command: JSON lines, Ray's console lines dropped below WARNING, the heartbeat."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator

import pytest

from pipelines.config import LoggingConfig
from pipelines.logs import QuietLibraries, heartbeat, setup_logging


@pytest.fixture
def root_restored() -> Iterator[None]:
    """setup_logging replaces the root handlers (pytest's included), captures warnings and sets
    library switches in the environment: undo all three."""
    root = logging.getLogger()
    handlers, level, environ = root.handlers[:], root.level, dict(os.environ)
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)
    os.environ.clear()
    os.environ.update(environ)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("root_restored")
def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json"), stream)
    logging.getLogger("pipelines.training.job").info("reading %d file(s)", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("pipelines.cli").exception("failed")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["level"] == "INFO" and first["logger"] == "pipelines.training.job"
    assert first["message"] == "reading 3 file(s)" and first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_other_libraries_lines_below_warning_are_dropped() -> None:
    """Ray's and MLflow's records reach our handler (ray_session and the environment see to it)."""
    quiet = QuietLibraries()

    def shown(name: str, level: int) -> bool:
        return quiet.filter(logging.makeLogRecord({"name": name, "levelno": level}))

    assert not shown("ray", logging.INFO) and not shown("ray.data", logging.INFO)
    assert not shown("mlflow.store.db.utils", logging.INFO) and not shown("pipelinesx", logging.INFO)
    assert shown("ray.train", logging.WARNING) and shown("py.warnings", logging.WARNING)
    assert shown("pipelines.ray_runtime", logging.INFO) and shown("serve.app", logging.INFO)


@pytest.mark.usefixtures("root_restored")
def test_debug_shows_every_library_and_a_log_file_gets_no_progress_bars() -> None:
    os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    stream = io.StringIO()  # not a terminal
    setup_logging(LoggingConfig(level="DEBUG"), stream)
    logging.getLogger("somelib.core").debug("execution plan")  # a library that keeps Python's defaults
    assert "DEBUG somelib.core: execution plan" in stream.getvalue()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_CONFIGURE_LOGGING"] == "false"


@pytest.mark.usefixtures("root_restored")
def test_the_level_applies_to_our_lines() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(level="WARNING"), stream)
    logging.getLogger("pipelines.data.window").info("below the level")
    logging.getLogger("pipelines.data.window").warning("shown")
    assert lines(stream) == [line for line in lines(stream) if "WARNING pipelines.data.window: shown" in line]
    assert len(lines(stream)) == 1


@pytest.mark.usefixtures("root_restored")
def test_a_heartbeat_names_the_running_stage_only_while_it_is_quiet() -> None:
    stream = io.StringIO()
    tracker = setup_logging(LoggingConfig(), stream)
    stage = logging.getLogger("pipelines.training.job")
    with heartbeat(tracker, interval_s=0.1):
        stage.info("fitting")
        time.sleep(0.35)
    beats = [line for line in lines(stream) if "still running" in line]
    assert 2 <= len(beats) <= 4, lines(stream)
    assert all("still running: fitting (" in line for line in beats)
    assert tracker.stage == "fitting"  # its own lines do not become the stage
    quiet = len(lines(stream))
    time.sleep(0.2)
    assert len(lines(stream)) == quiet  # stopped with the block


@pytest.mark.usefixtures("root_restored")
def test_library_warnings_become_log_lines() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json"), stream)
    warnings.warn("deprecated knob", FutureWarning, stacklevel=1)
    (entry,) = (json.loads(line) for line in lines(stream))
    assert entry["logger"] == "py.warnings" and "FutureWarning: deprecated knob" in entry["message"]
    assert "warnings.warn(" not in entry["message"]  # the source line is left out: one line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("root_restored")
def test_a_terminal_gets_one_short_line_per_stage_and_full_lines_for_warnings() -> None:
    os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    stream = Terminal()
    setup_logging(LoggingConfig(), stream)
    logging.getLogger("pipelines.training.job").info("training run abc: 1 epoch(s)")
    logging.getLogger("pipelines.data.window").warning("a day is empty")
    stage, warning = lines(stream)
    assert re.fullmatch(r"\d\d:\d\d:\d\d training run abc: 1 epoch\(s\)", stage), stage
    assert warning.endswith("WARNING pipelines.data.window: a day is empty")
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ  # bars redraw in place on a terminal
