from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import DEFAULT_CONFIG_FILE, DEMO_CONFIG_FILE, OncallConfig, load_config
from pipelines.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_default_file_documents_exactly_the_model_defaults() -> None:
    assert DEFAULT_CONFIG_FILE.is_file()
    assert load_config(environ={}) == OncallConfig()


def test_embedded_stores_live_under_data_dir(tmp_path: Path) -> None:
    config = load_config(environ={}, overrides={"data_dir": tmp_path})
    assert config.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert config.feedback_db_url == f"sqlite:///{tmp_path.resolve()}/feedback.db"
    assert config.artifacts_dir == tmp_path / "mlartifacts"
    assert config.ray_storage_dir == tmp_path / "ray"
    assert config.archive_uri == str(tmp_path / "archive")


def test_precedence_file_then_environment_then_options(tmp_path: Path) -> None:
    config_file = write(tmp_path, "train:\n  epochs: 5\n  lr: 0.01\nmodel:\n  lora:\n    r: 4\n")
    config = load_config(
        config_file,
        environ={"ONCALL_TRAIN__EPOCHS": "7", "ONCALL_MODEL__LORA__ALPHA": "32"},
        overrides={"train.epochs": 9, "train.workers": None},
    )
    assert config.train.epochs == 9  # option beats environment beats file
    assert config.train.lr == 0.01  # file beats default
    assert config.model.lora.r == 4 and config.model.lora.alpha == 32
    assert config.model.lora.dropout == OncallConfig().model.lora.dropout  # untouched sibling kept
    assert config.train.workers == 1  # a None option overrides nothing


def test_environment_values_are_parsed_and_aliases_apply(tmp_path: Path) -> None:
    config = load_config(
        environ={
            "ONCALL_DATA__TEXT_FIELDS": "[title, service]",
            "ONCALL_SERVE_TOKENS": "alpha, beta,",
            "ONCALL_DATA_DIR": str(tmp_path),
            "ONCALL_TRAIN__USE_GPU": "true",
            "ONCALL_TEST_POSTGRES_URL": "postgresql://ignored",
            "ONCALL_LOG_LEVEL": "DEBUG",
            "ONCALL_NIGHTLY__CRON": "*/30 2 * * *",  # not YAML (* starts an alias): kept as text
        }
    )
    assert config.nightly.cron == "*/30 2 * * *"
    assert config.data.text_fields == ["title", "service"]
    assert config.serve.auth_tokens == ["alpha", "beta"]
    assert config.data_dir == tmp_path
    assert config.train.use_gpu is True


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("train:\n  epochz: 3\n", "train.epochz: unknown key"),
        ("trian:\n  epochs: 3\n", "trian: unknown key"),
        ("train:\n  epochs: three\n", "train.epochs"),
        ("serve:\n  port: 70000\n", "serve.port"),
        ("model:\n  finetune: partial\n", "model.finetune"),
        ("data:\n  text_fields: [title, body]\n", "unknown ticket column(s) ['body']"),
        ("data:\n  text_fields: [service]\n", "must include 'title'"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ={})
    assert named in str(error.value)


def test_bad_environment_variable_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key"):
        load_config(environ={"ONCALL_TRAIN__NOPE": "1"})
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(environ={"ONCALL_TRAIN__EPOCHS": "many"})
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(environ={"ONCALL_TRAIN__EPOCHS": "*3"})
    with pytest.raises(ConfigError, match=r"'train\.epochs' is not a section"):
        load_config(environ={"ONCALL_TRAIN__EPOCHS__X": "1", "ONCALL_TRAIN__EPOCHS": "1"})


def test_unrecognised_prefixed_variable_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(environ={"ONCALL_TRAIN_EPOCHS": "5"})
    assert config.train.epochs == OncallConfig().train.epochs
    assert "ONCALL_TRAIN_EPOCHS" in caplog.text


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})
    assert load_config(write(tmp_path, ""), environ={}) == OncallConfig()


def test_later_files_win_and_the_demo_overlay_is_valid(tmp_path: Path) -> None:
    demo = load_config(DEMO_CONFIG_FILE, environ={})
    assert demo.train.epochs == 2 and demo.model.max_length == 64
    assert demo.train.lr == OncallConfig().train.lr  # only what the overlay names changes
    user = load_config(DEMO_CONFIG_FILE, write(tmp_path, "train:\n  epochs: 4\n"), environ={})
    assert user.train.epochs == 4 and user.model.max_length == 64


def test_relative_data_dir_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers run elsewhere: a relative --data-dir must not reach them as relative."""
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={}, overrides={"data_dir": "stores"})
    assert config.data_dir == tmp_path.resolve() / "stores"
    assert config.tracking_uri == f"sqlite:///{tmp_path.resolve()}/stores/mlflow.db"
