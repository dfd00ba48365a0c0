"""The evaluation report: CSVs and plots written for a run."""

from __future__ import annotations

from pathlib import Path

from pipelines.evaluation.metrics import evaluate_scores
from pipelines.evaluation.report import write_report
from tests.unit.evaluation.test_metrics import LABELS, scores


def test_report_files(tmp_path: Path) -> None:
    probabilities, true_ids = scores()
    evaluation = evaluate_scores(
        probabilities,
        true_ids,
        LABELS,
        target_accuracy=0.9,
        abstain_threshold=0.5,
        uncalibrated=probabilities,
    )
    written = write_report(evaluation, tmp_path)
    names = {path.name for path in written}
    assert names == {
        "per_tenant.csv",
        "coverage.csv",
        "confusion_matrix.png",
        "reliability.png",
        "coverage.png",
    }
    assert all(path.stat().st_size > 0 for path in written)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
