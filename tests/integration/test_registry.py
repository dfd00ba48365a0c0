"""Registry, aliases and the promotion gate on the embedded (SQLite) MLflow registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.artifacts import download_artifacts

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive
from pipelines.errors import ModelError
from pipelines.model.artifact import load_classifier
from pipelines.model.inference import TicketClassifier
from pipelines.registry.packaging import classifier_in
from pipelines.registry.promotion import promote, rollback
from pipelines.registry.versions import CHALLENGER, CHAMPION, PREVIOUS, Registry
from pipelines.training.job import TrainRequest, TrainResult, train
from tests.integration.mlflow_server import mlflow_store

pytestmark = pytest.mark.usefixtures("ray_cluster")

TICKETS = [
    {"title": "payment-gateway 在集群 sg1 出现大量 timeout", "service": "payment-gateway", "cluster": "sg1"},
    {"title": "Disk usage 91% on fra1-node-007", "description": "logs not rotated"},
    {"title": "用户反馈 /checkout/confirm 打不开"},
]


def run_cli(config: OncallConfig, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-c",
        "from pipelines.cli import main; main()",
        "--data-dir",
        str(config.data_dir),
    ]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)


def test_training_registers_a_challenger_version(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    config, result = trained_run
    ref = Registry(config).get(alias=CHALLENGER)
    assert ref.version == result.version and ref.run_id == result.run_id
    assert float(ref.tags["test_top1"]) == pytest.approx(result.evaluation.metrics["top1"], abs=1e-6)
    assert ref.tags["window.test"] == f"{result.split.test[0]}..{result.split.test[-1]}"
    assert ref.tags["git_commit"]
    local = Registry(config).download(ref, tmp_path)
    assert (local / "base" / "model.safetensors").is_file()  # the tiny base travels with the version
    assert json.loads((local / "metrics.json").read_text())["top1"] == pytest.approx(
        result.evaluation.metrics["top1"]
    )
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pt", ".bin", ".pickle")]


def test_registry_load_predicts_exactly_like_the_run_artifact(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    config, result = trained_run
    from_registry = Registry(config).load_classifier(alias=CHALLENGER)
    artifact = download_artifacts(
        run_id=result.run_id, artifact_path="model", dst_path=str(tmp_path), tracking_uri=config.tracking_uri
    )
    from_run = TicketClassifier.from_dir(classifier_in(Path(artifact)))
    assert from_registry.version == result.version
    assert from_registry.predict(TICKETS) == from_run.predict(TICKETS)
    # The same version through MLflow's own loader (models-from-code pyfunc, no pickle).
    with mlflow_store(config.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{config.registry.model_name}@{CHALLENGER}")
    frame = pyfunc.predict(pd.DataFrame(TICKETS))
    expected = from_run.predict(TICKETS)
    assert frame["tenant"].tolist() == [p.tenant for p in expected]
    assert frame["confidence"].tolist() == pytest.approx([p.confidence for p in expected])
    assert json.loads(frame["top_k"][0])[0] == {
        "tenant": expected[0].tenant,
        "score": pytest.approx(expected[0].confidence),
    }


def test_a_different_base_is_refused_with_a_clear_message(
    trained_run: tuple[OncallConfig, TrainResult], tmp_path: Path
) -> None:
    config, _ = trained_run
    local = Registry(config).download(Registry(config).get(alias=CHALLENGER), tmp_path)
    config_file = local / "base" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "rms_norm_eps": 1e-5}))
    with pytest.raises(ModelError, match=r"differs from the one .* was trained on"):
        load_classifier(local)


def shuffled_archive(source: Path, out: Path) -> Path:
    """The same tickets with tenants shuffled within each day: nothing left to learn."""
    for partition in Archive(str(source)).partitions():
        for path in partition.files:
            table = pq.read_table(path)
            order = np.random.default_rng(0).permutation(table.num_rows)
            shuffled = table.set_column(
                table.schema.get_field_index("tenant"), "tenant", table.column("tenant").take(order)
            )
            target = out / Path(path).parent.name / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(shuffled, target)
    return out


def test_gate_promotes_the_first_version_rejects_shuffled_labels_and_rolls_back(
    trained_run: tuple[OncallConfig, TrainResult],
    small_archive: tuple[Path, dict],
    tiny_base: Path,
    tmp_path: Path,
) -> None:
    config, result = trained_run
    registry = Registry(config)

    first = promote(config)
    assert first.promoted and first.version == result.version
    assert registry.get(alias=CHAMPION).version == result.version
    assert registry.get(version=result.version).tags["gate.decision"] == "promoted"

    bad_config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})})
    shuffled = shuffled_archive(small_archive[0], tmp_path / "shuffled")
    bad = train(bad_config, TrainRequest(archive_uri=str(shuffled), base_dir=tiny_base))
    done = run_cli(config, "promote", "--version", bad.version, "--archive", str(small_archive[0]))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "REJECTED" in done.stdout and "is below the champion's" in done.stdout
    assert registry.get(alias=CHAMPION).version == result.version  # the champion still serves
    rejected = registry.get(version=bad.version)
    assert rejected.tags["gate.decision"] == "rejected" and json.loads(rejected.tags["gate.regressions"])

    forced = promote(
        config, bad.version, archive_uri=str(small_archive[0]), force=True, reason="incident 42 needs it"
    )
    assert forced.promoted and forced.reasons[-1] == "forced: incident 42 needs it"
    assert registry.get(alias=CHAMPION).version == bad.version
    assert rollback(config) == (bad.version, result.version)

    again = registry.register_run(result.run_id)  # an equal model passes the gate
    assert promote(config, again.version).promoted
    assert registry.get(alias=CHAMPION).version == again.version
    assert registry.get(alias=PREVIOUS).version == result.version
    assert rollback(config) == (again.version, result.version)
    assert registry.get(alias=CHAMPION).version == result.version
    assert registry.alias_or_none(PREVIOUS) is None

    with_golden = config.model_copy(
        update={"promotion": config.promotion.model_copy(update={"golden_set": str(small_archive[0])})}
    )
    golden = promote(with_golden, registry.register_run(result.run_id).version)
    assert golden.promoted
    judged_without = promote(config, registry.register_run(result.run_id).version).metrics["judged_tickets"]
    assert golden.metrics["judged_tickets"] > judged_without  # the golden tickets were scored too
    assert rollback(config)[1] == golden.version

    nothing = run_cli(config, "rollback")
    assert (
        nothing.returncode == 2
        and "nothing to roll back to" in nothing.stderr
        and "Traceback" not in nothing.stderr
    )
