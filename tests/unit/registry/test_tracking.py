"""The one MLflow run lifecycle: every run ends FINISHED or FAILED, and can be resumed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipelines.config import OncallConfig
from pipelines.registry.tracking import Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    return Tracker(OncallConfig(data_dir=tmp_path_factory.mktemp("tracking")))


def test_a_run_finishes_with_what_was_written(tracker: Tracker, tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_text("hello\n")
    with tracker.run("lifecycle", run_name="ok", tags={"kind": "test"}) as run:
        run.params({"train": {"lr": 0.001, "epochs": 3}}, prefix="config")
        run.metrics({"top1": 0.9, "undefined": math.nan})
        run.tags({"long": "x" * 10_000})
        run.artifact(tmp_path / "report.txt")
    record = tracker.get(run.run_id)
    assert record.status == "FINISHED" and record.ended_at is not None
    assert record.params == {"config.train.lr": "0.001", "config.train.epochs": "3"}
    assert record.metrics == {"top1": 0.9}
    assert record.tags["kind"] == "test" and len(record.tags["long"]) == 4000
    assert [r.run_id for r in tracker.find("lifecycle", tags={"kind": "test"}, finished=True)] == [run.run_id]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_run_that_raises_is_failed_and_can_be_resumed(tracker: Tracker, error: BaseException) -> None:
    kind = {"kind": f"crash-{type(error).__name__}"}
    with pytest.raises(type(error)), tracker.run("lifecycle", tags=kind) as run:
        raise error
    assert tracker.get(run.run_id).status == "FAILED"
    assert tracker.find("lifecycle", tags=kind, finished=True) == []
    with tracker.run("lifecycle", resume_run_id=run.run_id) as resumed:
        resumed.metrics({"step": 1})
    assert resumed.run_id == run.run_id and tracker.get(run.run_id).status == "FINISHED"
    assert tracker.find("missing-experiment") == []
