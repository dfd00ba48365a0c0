"""An evaluation's report files: plots (coverage, reliability, confusion) and per-tenant CSVs."""

from __future__ import annotations

from pathlib import Path

from pipelines.evaluation.metrics import Evaluation


def write_report(evaluation: Evaluation, out: Path) -> list[Path]:
    """CSV tables and PNG plots of an evaluation into ``out`` (for MLflow artifacts)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "per_tenant.csv", out / "coverage.csv"]
    evaluation.per_tenant.to_csv(written[0], index=False)
    evaluation.coverage.iloc[:: max(1, len(evaluation.coverage) // 500)].to_csv(written[1], index=False)

    figure, axis = plt.subplots(figsize=(9, 8))
    image = axis.imshow(evaluation.confusion.to_numpy(), cmap="Blues")
    axis.set_xticks(
        range(len(evaluation.confusion.columns)), evaluation.confusion.columns, rotation=90, fontsize=7
    )
    axis.set_yticks(range(len(evaluation.confusion.index)), evaluation.confusion.index, fontsize=7)
    axis.set_xlabel("predicted tenant")
    axis.set_ylabel("true tenant")
    axis.set_title("Confusion matrix (most frequent tenants)")
    figure.colorbar(image)
    written.append(_save(figure, out / "confusion_matrix.png"))

    figure, axis = plt.subplots(figsize=(6, 6))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axis.plot(
        evaluation.reliability["confidence"], evaluation.reliability["accuracy"], marker="o", label="model"
    )
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title(f"Reliability (ECE {evaluation.metrics['ece']:.3f})")
    axis.legend()
    written.append(_save(figure, out / "reliability.png"))

    figure, axis = plt.subplots(figsize=(7, 5))
    axis.plot(evaluation.coverage["coverage"], evaluation.coverage["accuracy"])
    axis.axhline(evaluation.metrics["target_accuracy"], linestyle="--", color="grey", label="target accuracy")
    axis.axvline(
        evaluation.metrics["coverage_at_threshold"], linestyle=":", color="red", label="abstain threshold"
    )
    axis.set_xlabel("coverage (share of tickets routed automatically)")
    axis.set_ylabel("accuracy of routed tickets")
    axis.set_title(f"Accuracy vs coverage (threshold {evaluation.metrics['abstain_threshold']:.3f})")
    axis.legend()
    written.append(_save(figure, out / "coverage.png"))
    return written


def _save(figure: object, path: Path) -> Path:
    from matplotlib import pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
