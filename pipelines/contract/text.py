"""``TextBuilder``: the one place a ticket row becomes model text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class TextBuilder:
    """Turns a ticket into the model's input text: ``field: value`` pairs in a fixed order.

    Empty fields are left out; whitespace is collapsed; every field is capped and a long
    description keeps its head (where people write what broke) while its tail is cut.
    """

    fields: tuple[str, ...]
    max_field_chars: int
    max_description_chars: int

    def settings(self) -> dict[str, Any]:
        """JSON-able settings, stored with a classifier so every path builds the same text."""
        return {**asdict(self), "fields": list(self.fields)}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> TextBuilder:
        return cls(**{**settings, "fields": tuple(settings["fields"])})

    def build(self, ticket: Mapping[str, Any]) -> str:
        parts = []
        for name in self.fields:
            value = ticket.get(name)
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                continue
            text = _WHITESPACE.sub(" ", str(value)).strip()
            if not text:
                continue
            limit = self.max_description_chars if name == "description" else self.max_field_chars
            if len(text) > limit:
                text = text[: limit - 1].rstrip() + "…"
            parts.append(f"{name}: {text}")
        return " | ".join(parts)

    def build_many(self, tickets: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[str]:
        if isinstance(tickets, pd.DataFrame):
            present = [name for name in self.fields if name in tickets.columns]
            tickets = tickets[present].to_dict("records")
        return [self.build(ticket) for ticket in tickets]
