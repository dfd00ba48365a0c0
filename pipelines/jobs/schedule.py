"""The embedded scheduler of the nightly run (``oncall-router schedule``).

Semantics, all in UTC (the archive's day partitions are UTC days, and the cron is evaluated in
UTC whatever the machine's local time zone):

- A cron fire at time ``T`` runs the nightly for ``date = T.date() - 1 day``: the most recent day
  whose partition is complete. With the default ``nightly.cron`` ``"0 2 * * *"`` the fire of
  2026-10-08 02:00 UTC runs the nightly of 2026-10-07.
- On start, the date of the most recent fire at or before now is run once if it was not done yet
  (``last_done`` is older). Fires missed while the scheduler was down are not piled up: only the
  latest missed date runs (the nightly picks up every new partition anyway).
- Several fires that map to the same date (e.g. an hourly cron) run that date once.
- A failing run is logged with its traceback and the loop waits for the next fire; that date is
  not retried by the scheduler (run ``oncall-router nightly`` by hand for it).
- The loop sleeps in bounded chunks, so SIGTERM (``TerminatedError`` via ``stop_on``) and Ctrl-C
  stop it within seconds, also while it waits for a fire hours away.

The cron syntax is the one of a Kubernetes CronJob (5 fields, minute hour day-of-month month
day-of-week, or a macro such as ``@daily``), so the same value works in
``platform/kuberay/nightly-cronjob.yaml``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from croniter import CroniterError, croniter

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

UTC = dt.UTC
CRON_KEY = "nightly.cron"
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# Longest single sleep while waiting for a fire: bounds how late a stop request is noticed when
# a signal handler does not interrupt the sleep, and how far a suspended machine's clock drifts.
MAX_SLEEP_S = 30.0


def validate_cron(cron: str) -> str:
    """The expression (stripped, macros lower-cased) if ``cron`` is a 5-field cron expression or a
    macro that fires at least once; else a :class:`ConfigError` naming ``nightly.cron`` and the
    value."""
    expression = " ".join(cron.split())
    if expression.lower() in CRON_MACROS:
        expression = expression.lower()
    if expression in CRON_MACROS or (len(expression.split()) == 5 and croniter.is_valid(expression)):
        try:
            croniter(expression, dt.datetime(2000, 1, 1, tzinfo=UTC)).get_next(dt.datetime)
        except CroniterError:  # valid fields that never match (e.g. February 30)
            pass
        else:
            return expression
    raise ConfigError(
        f"{CRON_KEY}: {cron!r} is not a valid cron expression; expected 5 fields (minute hour "
        "day-of-month month day-of-week, evaluated in UTC), e.g. '0 2 * * *', or a macro such as '@daily'"
    )


def nightly_date(fire: dt.datetime) -> dt.date:
    """The date a fire at ``fire`` runs the nightly for: the day before, in UTC."""
    return _utc(fire).date() - dt.timedelta(days=1)


def previous_fire(cron: str, now: dt.datetime) -> dt.datetime:
    """The most recent fire at or before ``now`` (aware, UTC)."""
    expression = validate_cron(cron)
    # croniter's get_prev is strictly before its start: start a microsecond later to include now.
    start = _utc(now) + dt.timedelta(microseconds=1)
    return croniter(expression, start).get_prev(dt.datetime).astimezone(UTC)


def next_fire(cron: str, now: dt.datetime) -> dt.datetime:
    """The first fire strictly after ``now`` (aware, UTC). A naive ``now`` is read as UTC."""
    return croniter(validate_cron(cron), _utc(now)).get_next(dt.datetime).astimezone(UTC)


def next_fires(cron: str, now: dt.datetime, count: int) -> list[dt.datetime]:
    """The next ``count`` fires after ``now`` (for printing the schedule)."""
    fires: list[dt.datetime] = []
    for _ in range(count):
        now = next_fire(cron, now)
        fires.append(now)
    return fires


def due_date(cron: str, last_done: dt.date | None, now: dt.datetime) -> dt.date | None:
    """The date of the most recent fire at or before ``now`` if it is not done yet, else None.

    Only the latest fire counts: runs missed while nothing was scheduling are not piled up.
    """
    day = nightly_date(previous_fire(cron, now))
    if last_done is not None and last_done >= day:
        return None
    return day


def run_schedule(
    cron: str,
    run: Callable[[dt.date], object],
    last_done: Callable[[], dt.date | None],
    *,
    max_runs: int | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    sleep: Callable[[float], object] = time.sleep,
    max_sleep_s: float = MAX_SLEEP_S,
    stop_on: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``run(date)`` for each due date: once on start if the latest fire's date is not done,
    then at every fire. Returns the number of runs (failed ones included) once ``max_runs`` runs
    are done; with ``max_runs=None`` it runs until stopped.

    ``last_done()`` is asked before each run (so a nightly run by hand is not repeated); if it
    fails on start the error propagates (e.g. an unreachable registry), later failures are logged
    and the dates this loop has run stand in for it. An exception from ``run`` is logged and the
    loop goes on, except ``stop_on`` exceptions (e.g. ``TerminatedError``), which propagate like
    ``KeyboardInterrupt`` does. ``clock`` (default: now in UTC) and ``sleep`` are injectable.
    """
    validate_cron(cron)
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be at least 1, got {max_runs}")
    now_utc = clock or (lambda: dt.datetime.now(UTC))
    known_done = last_done()  # on start: a failure here is a configuration problem, let it out
    attempted: dt.date | None = None  # the latest date this loop ran (succeeded or not)
    runs = 0
    first = True
    while max_runs is None or runs < max_runs:
        if not first:
            known_done = _ask_last_done(last_done, stop_on)
        first = False
        done = max((d for d in (known_done, attempted) if d is not None), default=None)
        day = due_date(cron, done, now_utc())
        if day is not None:
            _run_once(run, day, stop_on)
            attempted = day
            runs += 1
            continue
        fire = next_fire(cron, now_utc())
        log.info("next nightly at %s UTC, for %s", fire.strftime("%Y-%m-%d %H:%M"), nightly_date(fire))
        while (remaining := (fire - _utc(now_utc())).total_seconds()) > 0:
            sleep(min(remaining, max_sleep_s))
    return runs


def _run_once(
    run: Callable[[dt.date], object], day: dt.date, stop_on: tuple[type[BaseException], ...]
) -> None:
    log.info("nightly for %s: starting", day)
    started = time.monotonic()
    try:
        run(day)
    except stop_on:
        raise
    except Exception:
        log.exception("nightly for %s failed; waiting for the next fire", day)
    else:
        log.info("nightly for %s: done in %.0f s", day, time.monotonic() - started)


def _ask_last_done(
    last_done: Callable[[], dt.date | None], stop_on: tuple[type[BaseException], ...]
) -> dt.date | None:
    try:
        return last_done()
    except stop_on:
        raise
    except Exception:
        log.exception("could not read the last successful nightly date; using the dates this loop ran")
        return None


def _utc(moment: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive datetime is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
