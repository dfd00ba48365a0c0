"""The time split of a window: training never sees the future."""

from __future__ import annotations

import datetime as dt

import pytest

from pipelines.data.window import TimeSplit
from pipelines.errors import ArchiveError


def test_time_split_keeps_the_future_out_of_training() -> None:
    days = [dt.date(2026, 10, d) for d in (5, 1, 3, 2, 4, 6)]
    split = TimeSplit.from_days(days, validation_days=2, test_days=1)
    assert split.train == (dt.date(2026, 10, 1), dt.date(2026, 10, 2), dt.date(2026, 10, 3))
    assert split.validation == (dt.date(2026, 10, 4), dt.date(2026, 10, 5))
    assert split.test == (dt.date(2026, 10, 6),)
    assert max(split.train) < min(split.validation) and max(split.validation) < min(split.test)
    with pytest.raises(ArchiveError, match="holds 3 day"):
        TimeSplit.from_days(days[:3], validation_days=2, test_days=1)
