"""The tenant label set of a classifier: an ordered list whose positions are the class ids.

Ids are stable: extending the set appends new tenants and never renumbers known ones, so a
head can grow (new rows) while existing rows keep their meaning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ModelError

LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class LabelSet:
    tenants: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.tenants)) != len(self.tenants):
            raise ModelError("labels: a tenant is listed twice")

    @classmethod
    def from_tenants(cls, tenants: Iterable[str]) -> LabelSet:
        """A new label set, sorted so the same tenants always get the same ids."""
        return cls(tuple(sorted(set(tenants))))

    def extended(self, tenants: Iterable[str]) -> LabelSet:
        """This set plus the tenants it does not know yet, appended in sorted order."""
        known = set(self.tenants)
        return LabelSet(self.tenants + tuple(sorted({t for t in tenants if t not in known})))

    def __len__(self) -> int:
        return len(self.tenants)

    def id_of(self) -> dict[str, int]:
        return {tenant: index for index, tenant in enumerate(self.tenants)}

    def save(self, directory: Path) -> Path:
        path = directory / LABELS_FILE
        path.write_text(json.dumps({"tenants": list(self.tenants)}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> LabelSet:
        path = directory / LABELS_FILE
        try:
            tenants = json.loads(path.read_text())["tenants"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: not a readable labels file ({exc})") from None
        if not all(isinstance(t, str) for t in tenants):
            raise ModelError(f"{path}: tenant ids must be strings")
        return cls(tuple(tenants))
