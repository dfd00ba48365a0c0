"""DayWindow: the one text form of a range of archive days."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.contract.days import DayWindow


def test_a_window_round_trips_through_its_text_form() -> None:
    window = DayWindow.of([dt.date(2026, 10, 9), dt.date(2026, 10, 1), dt.date(2026, 10, 4)])
    assert (window.first, window.last) == (dt.date(2026, 10, 1), dt.date(2026, 10, 9))
    assert str(window) == "2026-10-01..2026-10-09"
    assert DayWindow.parse(str(window)) == window


def test_nothing_recorded_parses_as_none_and_garbage_is_named() -> None:
    assert DayWindow.parse("") is None
    with pytest.raises(ValueError, match="not a day window"):
        DayWindow.parse("2026-10-01")


def test_a_window_cannot_end_before_it_starts() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        DayWindow(dt.date(2026, 10, 2), dt.date(2026, 10, 1))
