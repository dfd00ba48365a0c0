"""``TextBuilder``: the one place a ticket row becomes model text."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

_WHITESPACE = re.compile(r"\s+")
# Code points a tokenizer cannot take (lone UTF-16 surrogates: not encodable as UTF-8) or that
# carry no text (C0/C1 controls and DEL; tab and newlines are whitespace and collapse anyway).
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
REPLACEMENT = "\ufffd"


def repair_text(value: str) -> str:
    """The one repair rule for ticket text (Serve, rescore and training alike): a lone surrogate
    becomes U+FFFD, control characters go, the rest is NFC-normalised and its whitespace
    collapsed. Any JSON string comes out as text every tokenizer encodes."""
    text = _SURROGATES.sub(REPLACEMENT, value)
    text = unicodedata.normalize("NFC", _CONTROLS.sub(" ", text))
    return _WHITESPACE.sub(" ", text).strip()


def is_clean(value: str) -> bool:
    """No lone surrogate and no control character but tab and newlines."""
    return not (_SURROGATES.search(value) or _CONTROLS.search(value))


@dataclass(frozen=True)
class TextBuilder:
    """Turns a ticket into the model's input text: ``field: value`` pairs in a fixed order.

    Text is repaired (:func:`repair_text`); empty fields are left out; every field is capped
    and a long description keeps its head (where people write what broke) while its tail is cut.
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
            text = repair_text(str(value))
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
