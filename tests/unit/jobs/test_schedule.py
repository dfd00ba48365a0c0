"""The nightly scheduler's pure pieces and its loop, on a fake clock (no sleeping, no Ray)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from pipelines.errors import ConfigError
from pipelines.jobs.schedule import due_date, next_fire, next_fires, run_schedule, validate_cron

UTC = dt.UTC
NIGHTLY = "0 2 * * *"


def at(day: int, hour: int = 0, minute: int = 0, month: int = 10) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=UTC)


def d(day: int, month: int = 10) -> dt.date:
    return dt.date(2026, month, day)


class FakeClock:
    """``clock`` and ``sleep`` of the loop: sleeping advances the time, and is recorded."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


# --- due_date ----------------------------------------------------------------------------------


def test_a_fire_runs_the_day_before() -> None:
    assert due_date(NIGHTLY, None, at(8, 2, 0)) == d(7)  # exactly at the fire counts
    assert due_date(NIGHTLY, None, at(8, 2, 5)) == d(7)
    assert due_date(NIGHTLY, d(6), at(8, 3)) == d(7)


def test_before_todays_fire_the_previous_fire_counts() -> None:
    assert due_date(NIGHTLY, None, at(8, 1, 59)) == d(6)
    assert due_date(NIGHTLY, d(6), at(8, 1, 59)) is None


def test_already_done_is_none() -> None:
    assert due_date(NIGHTLY, d(7), at(8, 2, 0)) is None
    assert due_date(NIGHTLY, d(9), at(8, 2, 0)) is None  # a later date done by hand


def test_several_missed_fires_give_only_the_latest_date() -> None:
    # down from the fire of the 3rd (date 2) until the 8th at noon: 5 fires missed, one run
    assert due_date(NIGHTLY, d(2), at(8, 12)) == d(7)


def test_month_and_year_boundaries() -> None:
    assert due_date(NIGHTLY, None, at(1, 2, month=11)) == d(31)
    new_year = dt.datetime(2027, 1, 1, 2, tzinfo=UTC)
    assert due_date(NIGHTLY, None, new_year) == dt.date(2026, 12, 31)


def test_cron_is_evaluated_in_utc() -> None:
    naive = dt.datetime(2026, 10, 8, 2, 0)  # read as UTC
    assert due_date(NIGHTLY, None, naive) == d(7)
    tokyo = dt.timezone(dt.timedelta(hours=9))
    # 10:30 in Tokyo is 01:30 UTC: before the 02:00 UTC fire of the 8th
    assert due_date(NIGHTLY, None, dt.datetime(2026, 10, 8, 10, 30, tzinfo=tokyo)) == d(6)
    assert next_fire(NIGHTLY, dt.datetime(2026, 10, 8, 10, 30, tzinfo=tokyo)) == at(8, 2)


def test_an_hourly_cron_runs_each_date_once() -> None:
    assert due_date("@hourly", None, at(8, 5, 30)) == d(7)
    assert due_date("@hourly", d(7), at(8, 23, 30)) is None


# --- next_fire -----------------------------------------------------------------------------------


def test_next_fire_is_strictly_after_now_and_utc() -> None:
    assert next_fire(NIGHTLY, at(8, 1, 59)) == at(8, 2)
    assert next_fire(NIGHTLY, at(8, 2, 0)) == at(9, 2)
    assert next_fire(NIGHTLY, at(8, 2, 0)).tzinfo is not None
    assert next_fire("30 4 * * MON", at(8)) == at(12, 4, 30)  # 2026-10-08 is a Thursday
    assert next_fires(NIGHTLY, at(8, 3), 3) == [at(9, 2), at(10, 2), at(11, 2)]


# --- invalid cron -------------------------------------------------------------------------------


@pytest.mark.parametrize("cron", ["not a cron", "", "61 2 * * *", "0 2 * *", "0 0 2 * * *", "0 0 30 2 *"])
def test_invalid_cron_names_the_key_and_the_value(cron: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_cron(cron)
    assert "nightly.cron" in str(error.value)
    assert repr(cron) in str(error.value)
    with pytest.raises(ConfigError, match=r"nightly\.cron"):
        due_date(cron, None, at(8))
    with pytest.raises(ConfigError, match=r"nightly\.cron"):
        run_schedule(cron, run=lambda day: None, last_done=lambda: None, max_runs=1)


def test_valid_cron_forms() -> None:
    assert validate_cron(" 0  2 * * * ") == "0 2 * * *"
    assert validate_cron("@DAILY") == "@daily"
    assert validate_cron("*/15 1-3 * * MON-FRI") == "*/15 1-3 * * MON-FRI"


# --- run_schedule ---------------------------------------------------------------------------------


def test_runs_the_missed_date_on_start_then_each_fire() -> None:
    clock = FakeClock(at(8, 12))
    ran: list[dt.date] = []
    runs = run_schedule(
        NIGHTLY, run=ran.append, last_done=lambda: d(2), max_runs=3, clock=clock, sleep=clock.sleep
    )
    assert runs == 3
    assert ran == [d(7), d(8), d(9)]  # only the latest missed date, then one per fire
    assert clock.now == at(10, 2)  # stopped right after the third run, no extra wait
    assert max(clock.sleeps) <= 30  # bounded chunks: a stop request is noticed promptly


def test_nothing_due_on_start_waits_for_the_next_fire() -> None:
    clock = FakeClock(at(8, 12))
    ran: list[tuple[dt.date, dt.datetime]] = []
    run_schedule(
        NIGHTLY,
        run=lambda day: ran.append((day, clock.now)),
        last_done=lambda: d(7),
        max_runs=2,
        clock=clock,
        sleep=clock.sleep,
        max_sleep_s=600,
    )
    assert ran == [(d(8), at(9, 2)), (d(9), at(10, 2))]
    assert max(clock.sleeps) == 600


def test_a_failing_run_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(at(8, 2))
    ran: list[dt.date] = []

    def run(day: dt.date) -> None:
        ran.append(day)
        if day == d(7):
            raise RuntimeError("registry unreachable")

    with caplog.at_level(logging.ERROR, logger="pipelines.jobs.schedule"):
        runs = run_schedule(
            NIGHTLY, run=run, last_done=lambda: None, max_runs=2, clock=clock, sleep=clock.sleep
        )
    assert runs == 2
    assert ran == [d(7), d(8)]  # the failed date is not retried in a tight loop
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1 and "2026-10-07" in failures[0].getMessage()
    assert failures[0].exc_info is not None and "registry unreachable" in str(failures[0].exc_info[1])


def test_a_date_done_meanwhile_is_not_run_again() -> None:
    clock = FakeClock(at(8, 12))
    done: list[dt.date | None] = [None]
    ran: list[dt.date] = []

    def run(day: dt.date) -> None:
        ran.append(day)
        done[0] = day

    def last_done() -> dt.date | None:
        if clock.now >= at(9, 1):  # someone ran the nightly of the 8th by hand before the fire
            return d(8)
        return done[0]

    run_schedule(NIGHTLY, run=run, last_done=last_done, max_runs=2, clock=clock, sleep=clock.sleep)
    assert ran == [d(7), d(9)]


def test_last_done_failing_later_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(at(8, 12))
    calls = iter([d(7)])

    def last_done() -> dt.date | None:
        value = next(calls, None)
        if value is None:
            raise ConnectionError("mlflow down")
        return value

    ran: list[dt.date] = []
    with caplog.at_level(logging.ERROR, logger="pipelines.jobs.schedule"):
        run_schedule(NIGHTLY, run=ran.append, last_done=last_done, max_runs=2, clock=clock, sleep=clock.sleep)
    assert ran == [d(8), d(9)]
    assert any("last successful nightly" in r.getMessage() for r in caplog.records)


def test_stop_exceptions_propagate_instead_of_being_logged() -> None:
    class TerminatedError(Exception):
        pass

    clock = FakeClock(at(8, 12))

    def run(day: dt.date) -> None:
        raise TerminatedError("SIGTERM")

    with pytest.raises(TerminatedError):
        run_schedule(
            NIGHTLY,
            run=run,
            last_done=lambda: None,
            clock=clock,
            sleep=clock.sleep,
            stop_on=(TerminatedError,),
        )

    def interrupted_sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_schedule(
            NIGHTLY, run=lambda day: None, last_done=lambda: d(7), clock=clock, sleep=interrupted_sleep
        )


def test_max_runs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_runs"):
        run_schedule(NIGHTLY, run=lambda day: None, last_done=lambda: None, max_runs=0)
