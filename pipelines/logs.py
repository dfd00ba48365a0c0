"""Log lines of a command, on stderr (stdout is for its result): JSON objects, full text lines,
or, on a terminal, one compact line per stage.

Our jobs log each stage at INFO (``reading 12 file(s)…``, ``nightly …: step train``); that is the
progress a user sees. While a stage runs longer than ``logging.progress_interval_s`` and stderr is
not a terminal (a CI log, ``| cat``), :func:`heartbeat` adds a ``still running`` line now and then,
so a log never goes silent for minutes. Other libraries' lines below WARNING are dropped unless the
level is DEBUG (Ray keeps its own in the session's log files, see :mod:`pipelines.ray_runtime`;
MLflow's "Creating initial MLflow database tables" is not news), and so are the progress bars
libraries draw into a log that is not a terminal (a redraw per line there).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from pipelines.config import LoggingConfig

# Read by MLflow and Hugging Face when they are imported (after this setup: commands import them
# lazily). An explicit setting in the environment wins.
MLFLOW_OWN_HANDLERS = {"MLFLOW_CONFIGURE_LOGGING": "false"}  # its records reach our handler
PROGRESS_BARS_OFF = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# Loggers whose INFO lines are stages of our jobs (what a heartbeat names).
OWN_LOGGERS = ("pipelines", "serve", "benchmarks")
HEARTBEAT_LOGGER = "pipelines.progress"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
COMPACT_FORMAT = "%(asctime)s %(message)s"  # a terminal: the level only where it matters

log = logging.getLogger(HEARTBEAT_LOGGER)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``
    and, for an exception, ``exception`` (the traceback as one string)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class CompactFormatter(logging.Formatter):
    """A terminal's line: the time and the message; the level and logger for warnings and worse."""

    def __init__(self) -> None:
        super().__init__(COMPACT_FORMAT, datefmt="%H:%M:%S")
        self._full = logging.Formatter(TEXT_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return (self._full if record.levelno >= logging.WARNING else super()).format(record)


class QuietLibraries(logging.Filter):
    """Drops other libraries' records below WARNING (our INFO lines are the stages)."""

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        if top in OWN_LOGGERS:
            return True
        if top == "ray":
            # A failed Ray Data read prints its whole traceback and asks to file a Ray bug, while
            # the job names the file in one line; Ray's session logs keep all of it.
            if getattr(record, "hide", False) or record.name == "ray.data.exceptions":
                return False
            record.exc_info, record.exc_text = None, None
        return record.levelno >= logging.WARNING


class OneLineWarnings(logging.Filter):
    """A captured warning without the source line ``warnings.formatwarning`` appends to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            lines = record.getMessage().rstrip().splitlines()
            source = len(lines) > 1 and lines[-1].startswith("  ")  # formatwarning indents it
            record.msg, record.args = "\n".join(lines[:-1] if source else lines), ()
        return True


class StageTracker(logging.Filter):
    """Remembers the latest INFO line of our own loggers: the stage a heartbeat names."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = "starting"
        self.since = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN_LOGGERS and record.name != HEARTBEAT_LOGGER
        if own and record.levelno == logging.INFO:
            self.stage, self.since = record.getMessage(), time.monotonic()
        return True


def formatter_for(settings: LoggingConfig, stream: TextIO) -> logging.Formatter:
    if settings.format == "json":
        return JsonFormatter()
    if stream.isatty():
        return CompactFormatter()
    return logging.Formatter(TEXT_FORMAT, datefmt="%H:%M:%S")


def setup_logging(settings: LoggingConfig, stream: TextIO | None = None) -> StageTracker:
    """Route every log record and warning of this process to one handler on ``stream`` (stderr),
    replacing earlier setups (a command configures logging once it knows its configuration)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(settings, stream))
    tracker = StageTracker()
    if settings.level != "DEBUG":
        handler.addFilter(QuietLibraries())
    handler.addFilter(OneLineWarnings())
    handler.addFilter(tracker)
    for name, value in {**MLFLOW_OWN_HANDLERS, **({} if stream.isatty() else PROGRESS_BARS_OFF)}.items():
        os.environ.setdefault(name, value)
    logging.basicConfig(level=settings.level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # library warnings become records too (JSON lines in json mode)
    return tracker


@contextmanager
def heartbeat(tracker: StageTracker, interval_s: float) -> Iterator[None]:
    """Every ``interval_s`` without a new stage, log that the current stage is still running."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            if time.monotonic() - tracker.since >= interval_s:
                log.info("still running: %s (%.0f s)", tracker.stage, time.monotonic() - tracker.since)

    thread = threading.Thread(target=beat, name="oncall-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
