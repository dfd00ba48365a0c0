"""An evaluation's report files: plots (coverage, reliability, confusion) and per-tenant CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.evaluation.metrics import Evaluation

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_report(evaluation: Evaluation, out: Path) -> list[Path]:
    """CSV tables and PNG plots of an evaluation into ``out`` (for MLflow artifacts)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "per_tenant.csv", out / "coverage.csv"]
    evaluation.per_tenant.to_csv(written[0], index=False)
    evaluation.coverage.iloc[:: max(1, len(evaluation.coverage) // 500)].to_csv(written[1], index=False)
    written.append(_save(_plot_confusion(evaluation), out / "confusion_matrix.png"))
    written.append(_save(_plot_reliability(evaluation), out / "reliability.png"))
    written.append(_save(_plot_coverage(evaluation), out / "coverage.png"))
    return written


def _plot_confusion(evaluation: Evaluation) -> Figure:
    from matplotlib import pyplot as plt

    confusion = evaluation.confusion
    figure, axis = plt.subplots(figsize=(9, 8))
    image = axis.imshow(confusion.to_numpy(), cmap="Blues")
    axis.set_xticks(range(len(confusion.columns)), confusion.columns, rotation=90, fontsize=7)
    axis.set_yticks(range(len(confusion.index)), confusion.index, fontsize=7)
    axis.set_xlabel("predicted tenant")
    axis.set_ylabel("true tenant")
    axis.set_title("Confusion matrix (most frequent tenants)")
    figure.colorbar(image)
    return figure


def _plot_reliability(evaluation: Evaluation) -> Figure:
    from matplotlib import pyplot as plt

    metrics = evaluation.metrics
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    before = evaluation.reliability_uncalibrated
    if before is not None:
        axis.plot(
            before["confidence"],
            before["accuracy"],
            marker="x",
            alpha=0.6,
            label=f"before temperature scaling (ECE {metrics['ece_uncalibrated']:.3f})",
        )
    axis.plot(
        evaluation.reliability["confidence"],
        evaluation.reliability["accuracy"],
        marker="o",
        label=f"model, T = {metrics.get('temperature', 1.0):.2f} (ECE {metrics['ece']:.3f})",
    )
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title(f"Reliability (ECE {metrics['ece']:.3f})")
    axis.legend()
    return figure


def _plot_coverage(evaluation: Evaluation) -> Figure:
    from matplotlib import pyplot as plt

    metrics = evaluation.metrics
    figure, axis = plt.subplots(figsize=(7, 5))
    axis.plot(evaluation.coverage["coverage"], evaluation.coverage["accuracy"])
    axis.axhline(metrics["target_accuracy"], linestyle="--", color="grey", label="target accuracy")
    axis.axvline(
        metrics["coverage_at_threshold"],
        linestyle=":",
        color="red",
        label="abstain threshold (fit on validation)",
    )
    axis.set_xlabel("coverage (share of tickets routed automatically)")
    axis.set_ylabel("accuracy of routed tickets")
    axis.set_title(f"Accuracy vs coverage (threshold {metrics['abstain_threshold']:.3f})")
    axis.legend()
    return figure


def _save(figure: Figure, path: Path) -> Path:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
