"""--json: one function turns any command's result into JSON data."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.cli.render import jsonable


@dataclasses.dataclass
class Inner:
    day: dt.date
    path: Path


@dataclasses.dataclass
class Result:
    counts: Counter[str]
    tenants: set[str]
    frame: pd.DataFrame
    indexed: pd.DataFrame
    inner: Inner
    score: float
    numpy_score: np.float64
    days: tuple[dt.date, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def _private(self) -> int:
        raise AssertionError("private properties are not part of the result")


def test_a_result_becomes_json_data_with_its_properties() -> None:
    result = Result(
        counts=Counter({"empty_title": 2, "null_id": 1}),
        tenants={"b", "a"},
        frame=pd.DataFrame({"tenant": ["a"], "f1": [np.float32(0.5)]}),
        indexed=pd.DataFrame({"b": [1]}, index=pd.Index(["a"], name="true")),
        inner=Inner(dt.date(2026, 10, 1), Path("/x/y")),
        score=float("nan"),
        numpy_score=np.float64(0.25),
        days=(dt.date(2026, 10, 2),),
    )
    data = jsonable(result)
    assert json.loads(json.dumps(data, allow_nan=False)) == {
        "counts": {"empty_title": 2, "null_id": 1},
        "tenants": ["a", "b"],
        "frame": [{"tenant": "a", "f1": 0.5}],
        "indexed": [{"true": "a", "b": 1}],
        "inner": {"day": "2026-10-01", "path": "/x/y"},
        "score": None,
        "numpy_score": 0.25,
        "days": ["2026-10-02"],
        "total": 3,
    }
