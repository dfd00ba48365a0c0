"""A registry that fails to answer is an error, never "no such alias" (real MLflow: SQLite, and
an http:// server address where nothing listens)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.errors import ModelError, RegistryError
from pipelines.registry.promotion import promote, rollback
from pipelines.registry.tracking import Tracker, redact
from pipelines.registry.versions import CHAMPION, MissingVersionError, Registry
from tests.unit.registry.jobs_cli import NO_RETRIES, closed_port_uri, config_at, error_lines, run_cli


@pytest.fixture(autouse=True)
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in NO_RETRIES.items():
        monkeypatch.setenv(name, value)


def test_a_missing_model_version_or_alias_is_absent_not_an_error(tmp_path: Path) -> None:
    registry = Registry(config_at(tmp_path))
    assert registry.alias_or_none(CHAMPION) is None  # no registered model at all
    client: MlflowClient = registry.client
    client.create_registered_model(registry.name)
    client.create_model_version(registry.name, source=(tmp_path / "model").as_uri())
    assert registry.alias_or_none(CHAMPION) is None  # a model, but no such alias
    with pytest.raises(MissingVersionError, match=r"has no alias 'champion' in sqlite:///"):
        registry.get(alias=CHAMPION)
    with pytest.raises(MissingVersionError, match="has no version 7"):
        registry.get(version="7")
    registry.set_alias(CHAMPION, "1")
    assert registry.get(alias=CHAMPION).version == "1"
    assert registry.last_nightly_success() is None


def test_an_unreachable_registry_raises_naming_the_store_and_the_operation_never_the_password(
    tmp_path: Path,
) -> None:
    uri = closed_port_uri("ops:s3cret@")
    config = config_at(tmp_path, **{"registry.tracking_uri": uri})
    registry = Registry(config)
    for call, operation in (
        (lambda: registry.alias_or_none(CHAMPION), "reading alias 'champion' of 'oncall-router'"),
        (lambda: registry.get(version="1"), "reading version 1 of 'oncall-router'"),
        (registry.last_nightly_success, "reading registered model 'oncall-router'"),
        (lambda: Tracker(config).find("nightly"), "searching runs of experiment 'nightly'"),
        (lambda: Tracker(config).log_to("r1").metrics({"loss": 1.0}), "logging metrics to run r1"),
        (lambda: Tracker(config).log_to("r1").tags({"k": "v"}), "logging tags to run r1"),
        (
            lambda: registry.download_run_model("r1", tmp_path / "dst"),
            "downloading the 'model' artifact of run r1",
        ),
    ):
        with pytest.raises(RegistryError) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(f"MLflow at {redact(uri)}: {operation} failed: ")
        assert "s3cret" not in message and "ops:***@127.0.0.1" in message and "\n" not in message


def test_a_run_without_a_model_artifact_is_a_model_error_not_a_store_failure(tmp_path: Path) -> None:
    config = config_at(tmp_path)
    with Tracker(config).run("train") as run:
        pass
    with pytest.raises(ModelError, match=f"run {run.run_id} has no 'model' artifact") as raised:
        Registry(config).download_run_model(run.run_id, tmp_path / "dst")
    assert not isinstance(raised.value, RegistryError)


def test_promote_and_rollback_fail_instead_of_gating_as_a_first_version(tmp_path: Path) -> None:
    config = config_at(tmp_path, **{"registry.tracking_uri": closed_port_uri()})
    for job in (promote, rollback):  # both first look for a half-done promotion to finish
        with pytest.raises(RegistryError, match="reading registered model 'oncall-router'"):
            job(config)


def test_the_cli_prints_one_line_and_exits_69_when_the_registry_is_unreachable(tmp_path: Path) -> None:
    uri = closed_port_uri("ops:s3cret@")
    done = run_cli("--data-dir", str(tmp_path), "rollback", env={"ONCALL_TRACKING_URI": uri})
    assert done.returncode == 69, done.stderr[-2000:]
    assert error_lines(done) == [error_lines(done)[0]] and f"MLflow at {redact(uri)}" in done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://mlflow:p%40ss@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("https://user:tok@mlflow.example.com/x", "https://user:***@mlflow.example.com/x"),
        ("https://token@mlflow.example.com", "https://***@mlflow.example.com"),
        ("postgresql://postgres@127.0.0.1/db", "postgresql://postgres@127.0.0.1/db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ],
)
def test_redact_hides_passwords_and_tokens(uri: str, shown: str) -> None:
    assert redact(uri) == shown
