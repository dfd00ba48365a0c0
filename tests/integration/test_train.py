"""Training on a small generated archive: real Ray (one session cluster), real MLflow (SQLite)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from pipelines.config import OncallConfig
from pipelines.evaluation.job import score_rows
from pipelines.faults import Faults
from pipelines.model.artifact import LabelSet
from pipelines.model.inference import TicketClassifier
from pipelines.registry.packaging import classifier_in
from pipelines.training.job import TrainRequest, TrainResult, train
from tests.conftest import small_config

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_learns_far_above_the_majority_baseline(trained_run: tuple[OncallConfig, TrainResult]) -> None:
    config, result = trained_run
    metrics = result.evaluation.metrics
    assert metrics["top1"] > 0.7
    assert metrics["top1"] > 2 * metrics["majority_baseline_top1"]
    assert metrics["top3"] >= metrics["top1"]
    losses = MlflowClient(config.tracking_uri).get_metric_history(result.run_id, "train_loss")
    assert len(losses) == 2 and losses[1].value < losses[0].value * 0.8  # loss goes down


def test_window_counts_lose_nothing(
    trained_run: tuple[OncallConfig, TrainResult], small_archive: tuple[Path, dict]
) -> None:
    _, result = trained_run
    stats = result.stats
    assert stats.rows == small_archive[1]["tickets"]
    assert stats.rows == sum(stats.rejected.values()) + stats.unresolved + sum(stats.labelled.values())
    assert stats.unresolved > 0 and stats.labelled["train"] > stats.labelled["test"] > 0
    assert set(result.labels.tenants) == set(stats.train_tenant_counts)
    assert len(result.split.test) == 2 and len(result.split.validation) == 2  # newest days held out


def test_mlflow_run_holds_params_metrics_and_artifacts(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    config, result = trained_run
    run = MlflowClient(config.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (
        params["train.epochs"] == "2" and params["model.lora.r"] == "8" and params["model.max_length"] == "64"
    )
    assert params["window.test"] == f"{result.split.test[0]}..{result.split.test[-1]}"
    for name in (
        "train_loss",
        "val_loss",
        "val_top1",
        "test_top1",
        "test_top3",
        "test_macro_f1",
        "test_ece",
        "test_abstain_threshold",
        "rows_read",
        "rows_unresolved",
    ):
        assert name in run.data.metrics, name
    root = Path(
        download_artifacts(run_id=result.run_id, dst_path=str(tmp_path), tracking_uri=config.tracking_uri)
    )
    assert LabelSet.load(root) == result.labels
    for name in ("per_tenant.csv", "confusion_matrix.png", "reliability.png", "coverage.png", "metrics.json"):
        assert (root / "evaluation" / name).stat().st_size > 0, name
    classifier = classifier_in(root / "model")
    assert (root / "model" / "MLmodel").is_file()  # an MLflow pyfunc (models-from-code) around it
    assert (classifier / "adapter" / "adapter_model.safetensors").is_file()
    descriptor = json.loads((classifier / "classifier.json").read_text())
    assert descriptor["abstain_threshold"] == pytest.approx(result.evaluation.metrics["abstain_threshold"])
    assert not list(root.rglob("*.pkl")) and not list(root.rglob("*.bin"))  # JSON + safetensors only


def test_logged_model_reproduces_the_logged_evaluation(
    trained_run: tuple[OncallConfig, TrainResult], small_archive: tuple[Path, dict], tmp_path: Path
) -> None:
    from pipelines.data.window import labelled_rows

    config, result = trained_run
    model_dir = classifier_in(
        Path(
            download_artifacts(
                run_id=result.run_id,
                artifact_path="model",
                dst_path=str(tmp_path),
                tracking_uri=config.tracking_uri,
            )
        )
    )
    classifier = TicketClassifier.from_dir(model_dir)
    rows = labelled_rows(
        str(small_archive[0]), classifier.text_builder, result.split.test[0], result.split.test[-1]
    )
    rows = rows.sort_values("ticket_id", ignore_index=True)
    evaluation, unseen = score_rows(classifier, rows, config)
    assert evaluation.metrics["top1"] == pytest.approx(result.evaluation.metrics["top1"], abs=1e-9)
    assert unseen == result.stats.unseen_tenant["test"]
    # Raw archive rows through predict() score exactly like the training path's prepared text.
    day_file = next((small_archive[0] / f"date={result.split.test[-1]}").glob("*.parquet"))
    last_day_ids = rows.loc[rows["day"] == result.split.test[-1], "ticket_id"].head(20)
    raw = pq.read_table(day_file).to_pandas().set_index("ticket_id").loc[last_day_ids]
    predictions = classifier.predict(raw.reset_index().to_dict("records"))
    prepared = rows.set_index("ticket_id").loc[raw.index, "text"].tolist()
    expected = classifier.predict_proba_texts(prepared)
    assert [p.tenant for p in predictions] == [result.labels.tenants[i] for i in expected.argmax(axis=1)]
    assert [p.confidence for p in predictions] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-6)
    assert all(len(p.top_k) == 3 and p.top_k[0] == (p.tenant, p.confidence) for p in predictions)
    assert all(p.abstain == (p.confidence < classifier.abstain_threshold) for p in predictions)


def test_two_workers_resume_after_a_worker_dies(
    tmp_path: Path,
    small_archive: tuple[Path, dict],
    tiny_base: Path,
    trained_run: tuple[OncallConfig, TrainResult],
) -> None:
    config = small_config(
        tmp_path, **{"train.workers": 2, "train.cpus_per_worker": 1.0, "train.max_failures": 1}
    )
    steps_per_epoch = math.ceil(trained_run[1].stats.labelled["train"] / (32 * 2))
    marker = tmp_path / "fault-fired"
    faults = Faults.at("train.worker_exit", at_step=steps_per_epoch + 2, marker=marker)
    result = train(config, TrainRequest(archive_uri=str(small_archive[0]), base_dir=tiny_base, faults=faults))
    assert marker.is_file()  # a worker really died
    assert result.progress["resumed_from_step"] == steps_per_epoch  # from the epoch-1 checkpoint, not step 0
    assert result.progress["step"] == 2 * steps_per_epoch  # no step ran twice into the count
    assert result.evaluation.metrics["top1"] > 2 * result.evaluation.metrics["majority_baseline_top1"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from pipelines.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_command_logs_to_the_run(trained_run: tuple[OncallConfig, TrainResult]) -> None:
    config, result = trained_run
    done = run_cli("--data-dir", str(config.data_dir), "evaluate", "--run-id", result.run_id)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top1" in done.stdout and "abstain_threshold" in done.stdout
    logged = MlflowClient(config.tracking_uri).get_run(result.run_id).data.metrics
    assert logged["eval_top1"] == pytest.approx(result.evaluation.metrics["top1"], abs=1e-9)


def test_train_command_errors_are_clear(tmp_path: Path, small_archive: tuple[Path, dict]) -> None:
    no_base = run_cli("--data-dir", str(tmp_path), "train", "--archive", str(small_archive[0]))
    assert no_base.returncode == 2 and "oncall-router init-base --preset tiny" in no_base.stderr
    missing = run_cli("--data-dir", str(tmp_path), "evaluate", "--run-id", "0123456789abcdef")
    assert missing.returncode == 2 and "run 0123456789abcdef" in missing.stderr
    assert "Traceback" not in no_base.stderr + missing.stderr
