from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipelines.config import FieldDoc, OncallConfig, field_doc, load_config, render_defaults_yaml
from pipelines.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_YAML = REPO / "platform" / "config" / "default.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def leaf_keys(model: type[BaseModel] = OncallConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def test_the_defaults_come_from_the_model_without_any_file() -> None:
    assert load_config(environ={}) == OncallConfig()


def test_committed_default_yaml_is_the_rendering_of_the_model() -> None:
    assert DEFAULT_YAML.read_text(encoding="utf-8") == render_defaults_yaml(), (
        "platform/config/default.yaml is stale: run "
        "`.venv/bin/python -m pipelines.config > platform/config/default.yaml`"
    )


def test_rendered_defaults_load_back_to_the_model_and_document_every_key(tmp_path: Path) -> None:
    rendered = render_defaults_yaml()
    assert load_config(write(tmp_path, rendered), environ={}) == OncallConfig()
    assert OncallConfig.model_validate(yaml.safe_load(rendered)) == OncallConfig()
    keys = leaf_keys()
    assert len(keys) > 50 and "model.lora.r" in keys
    undocumented = [key for key in keys if not field_doc(key).description]
    assert not undocumented, f"config keys without a Field(description=...): {undocumented}"
    for key in keys:  # each description is written above its key
        assert f"# {field_doc(key).description.split()[0]}" in rendered, key


def test_field_doc_names_default_choices_and_short_environment_name() -> None:
    assert field_doc("train.epochs") == FieldDoc("train.epochs", "Training epochs.", 3)
    assert field_doc("rescore.on_bad_file").choices == ("fail", "skip")
    assert field_doc("data_dir").default_text == ".oncall" and field_doc("data_dir").env == "ONCALL_DATA_DIR"
    assert field_doc("data.text_fields").default_text.startswith("[service, title")
    for unknown in ("train.epochz", "train.epochs.x", "nope"):
        with pytest.raises(KeyError, match="no config key"):
            field_doc(unknown)


def test_an_installed_wheel_loads_the_default_and_the_demo_config(tmp_path: Path) -> None:
    """Built from a copy of the sources (the checkout stays untouched), unpacked, and imported in
    a process whose working directory and path hold no checkout."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("pipelines", "serve"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip_wheel = ["pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-cache-dir"]
    built = subprocess.run(
        [sys.executable, "-m", *pip_wheel, str(source), "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("oncall_router-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "pipelines/cli/demo.yaml" in archive.namelist()
        archive.extractall(tmp_path / "site")
    check = (
        "import pipelines, sys; from pipelines.config import OncallConfig, load_config; "
        "from pipelines.cli import DEMO_OVERLAY; "
        f"assert pipelines.__file__.startswith({str(tmp_path / 'site')!r}), pipelines.__file__; "
        "assert load_config(environ={}) == OncallConfig(); "
        "assert load_config(DEMO_OVERLAY, environ={}).train.epochs == 2; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "ok", done.stderr


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
            "ONCALL_SERVE_TOKENS": "alpha-token-0123456789, beta-token-0123456789,",
            "ONCALL_DATA_DIR": str(tmp_path),
            "ONCALL_TRAIN__USE_GPU": "true",
            "ONCALL_TEST_POSTGRES_URL": "postgresql://ignored",
            "ONCALL_LOG_LEVEL": "DEBUG",
            "ONCALL_NIGHTLY__CRON": "*/30 2 * * *",  # not YAML (* starts an alias): kept as text
        }
    )
    assert config.nightly.cron == "*/30 2 * * *"
    assert config.data.text_fields == ["title", "service"]
    assert config.serve.auth_tokens == ["alpha-token-0123456789", "beta-token-0123456789"]
    assert config.data_dir == tmp_path
    assert config.train.use_gpu is True
    assert config.logging.level == "DEBUG"  # ONCALL_LOG_LEVEL is the short name of logging.level


def test_logging_settings_for_commands_and_serve_replicas(tmp_path: Path) -> None:
    config = load_config(environ={"ONCALL_LOGGING__FORMAT": "json"}, overrides={"logging.level": "warning"})
    assert config.logging.level == "WARNING" and config.logging.format == "json"
    assert config.logging.serve_logging() == {"encoding": "JSON", "log_level": "WARNING"}
    assert OncallConfig().logging.ray_output == "files"  # quiet unless asked
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_config(write(tmp_path, "logging:\n  format: xml\n"), environ={})
    assert (
        load_config(environ={}, overrides={"data_dir": tmp_path}).ray_sessions_dir
        == tmp_path / "ray" / "sessions"
    )


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


def test_later_files_win(tmp_path: Path) -> None:
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("train:\n  epochs: 2\nmodel:\n  max_length: 64\n")
    second.write_text("train:\n  epochs: 4\n")
    config = load_config(first, second, environ={})
    assert config.train.epochs == 4 and config.model.max_length == 64


def test_relative_data_dir_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers run elsewhere: a relative --data-dir must not reach them as relative."""
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={}, overrides={"data_dir": "stores"})
    assert config.data_dir == tmp_path.resolve() / "stores"
    assert config.tracking_uri == f"sqlite:///{tmp_path.resolve()}/stores/mlflow.db"
