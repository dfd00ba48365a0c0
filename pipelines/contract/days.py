"""``DayWindow``: a closed range of archive days, and its one text form ``YYYY-MM-DD..YYYY-MM-DD``
(run params ``window.*``, version tags, the nightly's summary)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

SEPARATOR = ".."


@dataclass(frozen=True, order=True)
class DayWindow:
    first: dt.date
    last: dt.date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"a day window ends before it starts: {self.first}{SEPARATOR}{self.last}")

    @classmethod
    def of(cls, days: Sequence[dt.date]) -> DayWindow:
        """The window spanning ``days`` (sorted, not empty)."""
        return cls(min(days), max(days))

    @classmethod
    def parse(cls, text: str) -> DayWindow | None:
        """The window written by :meth:`__str__`; None for an empty text (nothing recorded)."""
        if not text:
            return None
        first, separator, last = text.partition(SEPARATOR)
        if not separator:
            raise ValueError(f"not a day window (YYYY-MM-DD{SEPARATOR}YYYY-MM-DD): {text!r}")
        return cls(dt.date.fromisoformat(first), dt.date.fromisoformat(last))

    def __str__(self) -> str:
        return f"{self.first.isoformat()}{SEPARATOR}{self.last.isoformat()}"
