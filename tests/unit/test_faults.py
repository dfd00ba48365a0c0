"""Fault injection fires only where a test planned it."""

from __future__ import annotations

import pytest

from pipelines.faults import Faults, InjectedFaultError


def test_no_plan_never_fires() -> None:
    Faults().check("nightly.after.train")


def test_a_planned_point_fires_and_others_do_not() -> None:
    faults = Faults.at("nightly.after.register")
    faults.check("nightly.after.train")
    with pytest.raises(InjectedFaultError, match=r"nightly\.after\.register"):
        faults.check("nightly.after.register")
    assert faults.planned_at("train.worker_exit") is None
