"""One typed configuration tree for every job.

Precedence, lowest first: the model defaults (identical to ``platform/config/default.yaml``),
that file, an optional ``--config FILE``, ``ONCALL_*`` environment variables, explicit
command-line overrides. Nothing here runs at import time: :func:`load_config` is called by the
CLI (or a test) and the result is passed down explicitly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "ONCALL_"
ENV_NESTING = "__"
# Short environment names documented in the README, mapped to their config path.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "ONCALL_DATA_DIR": ("data_dir",),
    "ONCALL_SERVE_TOKENS": ("serve", "auth_tokens"),
    "ONCALL_TRACKING_URI": ("registry", "tracking_uri"),
}
# Variables with the prefix that are not configuration (read by the test-suite, the CLI or the
# notebooks).
ENV_NOT_CONFIG = (
    "ONCALL_TEST_",
    "ONCALL_CONFIG",
    "ONCALL_LOG_LEVEL",
    "ONCALL_NOTEBOOK_",
    "ONCALL_ROUTER_URL",
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "platform" / "config"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "default.yaml"
# The demo's overlay: a smaller model input and fewer epochs, so `make demo` fits in minutes.
DEMO_CONFIG_FILE = CONFIG_DIR / "demo.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    archive: str | None = Field(
        default=None,
        description="Ticket archive URI (local dir, s3://, gs://); default <data_dir>/archive.",
    )
    text_fields: list[str] = Field(
        default=["service", "title", "description", "cluster", "region", "source", "severity"],
        description="Ticket columns that make the model text, in this order.",
    )
    max_field_chars: int = Field(default=160, ge=8, description="Cap on every field but description.")
    max_description_chars: int = Field(
        default=400, ge=16, description="Longer descriptions keep their head; the tail is cut."
    )
    validation_days: int = Field(default=2, ge=1, description="Newest days before test: validation.")
    test_days: int = Field(default=2, ge=1, description="Newest days of the window: test.")

    @field_validator("text_fields")
    @classmethod
    def _known_text_fields(cls, fields: list[str]) -> list[str]:
        from pipelines.contract.columns import TEXT_COLUMNS

        unknown = [f for f in fields if f not in TEXT_COLUMNS]
        if unknown:
            raise ValueError(f"unknown ticket column(s) {unknown}; choose from {list(TEXT_COLUMNS)}")
        if "title" not in fields:
            raise ValueError("must include 'title' (the only required text column)")
        if len(set(fields)) != len(fields):
            raise ValueError("lists a column twice")
        return fields


class LoraConfig(_Section):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="All linear projections of a Qwen3 block by default.",
    )


class ModelConfig(_Section):
    base: str = Field(
        default="tiny",
        description="A preset name ('tiny') or a local Qwen3 checkpoint directory.",
    )
    max_length: int = Field(default=128, ge=8, le=32768, description="Tokens per ticket.")
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig()
    tokenizer_vocab_size: int = Field(
        default=8000, ge=300, description="BPE vocabulary of the tiny preset's tokenizer."
    )


class TrainConfig(_Section):
    workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1)
    grad_accum_steps: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    class_weighting: Literal["none", "inverse_sqrt", "inverse"] = "inverse_sqrt"
    checkpoints_to_keep: int = Field(default=2, ge=1)
    max_failures: int = Field(default=1, ge=0)
    seed: int = 0


class EvaluateConfig(_Section):
    target_accuracy: float = Field(
        default=0.95, gt=0, le=1, description="Accuracy the abstain threshold must reach on routed tickets."
    )
    top_k: int = Field(default=3, ge=1)
    confusion_tenants: int = Field(default=20, ge=2, description="Tenants shown in the confusion matrix.")


class RegistryConfig(_Section):
    tracking_uri: str | None = Field(
        default=None, description="MLflow URI; default sqlite:///<data_dir>/mlflow.db."
    )
    model_name: str = Field(default="oncall-router", min_length=1)
    experiment: str = Field(default="train", min_length=1)


class PromotionConfig(_Section):
    """Rules of the gate that moves alias ``champion`` to a challenger."""

    top1_tolerance: float = Field(default=0.01, ge=0, le=1, description="Allowed top-1 drop vs the champion.")
    recall_drop: float = Field(default=0.10, ge=0, le=1, description="Allowed recall drop of one tenant.")
    min_support: int = Field(default=20, ge=1, description="Tenants with fewer test tickets are not judged.")
    first_version_margin: float = Field(
        default=0.20, ge=0, le=1, description="A first version must beat the majority baseline by this."
    )
    golden_set: str | None = Field(
        default=None,
        description="A fixed labelled ticket archive (same contract) added to every gate evaluation.",
    )


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    alias: str = "champion"
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_timeout_s: float = Field(
        default=0.002, ge=0, description="How long a lone request waits for company (benchmarks/RESULTS.md)."
    )
    max_tickets_per_request: int = Field(default=256, ge=1)
    top_k: int = Field(default=3, ge=1, description="Ranked tenants in each answer.")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: int = Field(default=16, ge=1)
    alias_poll_interval_s: float = Field(default=10.0, gt=0)
    replica_cpus: float = Field(default=1.0, gt=0, description="Logical CPUs per model replica.")
    replica_gpus: float = Field(default=0.0, ge=0, description="GPUs per model replica (0: CPU).")
    throughput_optimized: bool = Field(
        default=True,
        description="A local Ray started to serve gets RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct "
        "ingress, gRPC between deployments); on a cluster, set it in the nodes' environment.",
    )
    auth_tokens: list[str] = Field(default_factory=list, description="Empty: no auth.")
    feedback_db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/feedback.db."
    )


class RescoreConfig(_Section):
    out: str | None = Field(default=None, description="Default <data_dir>/scored.")
    batch_size: int = Field(default=256, ge=1)
    actors: int = Field(default=2, ge=1)
    cpus_per_actor: float = Field(default=0.5, gt=0)
    misroute_confidence: float = Field(default=0.8, ge=0, le=1)
    on_bad_file: Literal["fail", "skip"] = "fail"


class NightlyConfig(_Section):
    cron: str = "0 2 * * *"
    replay_size: int = Field(default=20000, ge=0)
    rescore_days: int = Field(default=7, ge=0)


class OncallConfig(_Section):
    data_dir: Path = Field(
        default=Path(".oncall"), validate_default=True, description="Every embedded store lives here."
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    serve: ServeConfig = ServeConfig()
    rescore: RescoreConfig = RescoreConfig()
    nightly: NightlyConfig = NightlyConfig()

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, data_dir: Path) -> Path:
        """Absolute, because Ray workers and actors do not run in the caller's directory."""
        return data_dir.expanduser().resolve()

    # Embedded stores, all under data_dir unless configured otherwise.
    @property
    def archive_uri(self) -> str:
        return self.data.archive or str(self.data_dir / "archive")

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.data_dir}/mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    @property
    def ray_storage_dir(self) -> Path:
        return self.data_dir / "ray"

    @property
    def feedback_db_url(self) -> str:
        return self.serve.feedback_db_url or f"sqlite:///{self.data_dir}/feedback.db"

    @property
    def rescore_out(self) -> str:
        return self.rescore.out or str(self.data_dir / "scored")

    @property
    def preset_bases_dir(self) -> Path:
        """Where ``init-base`` writes a preset base (``<data_dir>/bases/<preset>``)."""
        return self.data_dir / "bases"


def load_config(
    *config_files: Path,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    default_file: Path = DEFAULT_CONFIG_FILE,
) -> OncallConfig:
    """Merge defaults, YAML files (later ones win), environment and explicit overrides into one
    validated tree.

    ``overrides`` uses dotted keys (``{"train.epochs": 2, "data_dir": "/x"}``); ``None`` values
    are ignored so CLI options that were not given do not override anything.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if default_file.is_file():
        _deep_merge(merged, _read_yaml(default_file))
    for config_file in config_files:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        _deep_merge(merged, _read_yaml(config_file))
    for dotted_path, value, origin in _environment_overrides(environ):
        _set_path(merged, dotted_path, value, origin)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(merged, tuple(key.split(".")), value, f"option {key}")
    try:
        return OncallConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(content).__name__}")
    return content


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[tuple[str, ...], Any, str]]:
    """``ONCALL_TRAIN__EPOCHS=3`` → (("train", "epochs"), 3). Values are parsed as YAML scalars."""
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_NOT_CONFIG):
            continue
        raw = environ[name]
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
            value: Any = _parse_env_value(raw)
            if path == ("serve", "auth_tokens") and isinstance(value, str):
                value = [token.strip() for token in value.split(",") if token.strip()]
        elif ENV_NESTING in name:
            path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split(ENV_NESTING))
            value = _parse_env_value(raw)
        else:
            log.warning(
                "ignoring environment variable %s: configuration variables look like "
                "ONCALL_<SECTION>__<KEY> (e.g. ONCALL_TRAIN__EPOCHS)",
                name,
            )
            continue
        found.append((path, value, f"environment variable {name}"))
    return found


def _parse_env_value(raw: str) -> Any:
    """YAML (numbers, booleans, lists) where it parses, else the raw string: a cron such as
    ``*/5 * * * *`` is not YAML (``*`` starts an alias). A wrong type is still named by the
    model's validation."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any, origin: str) -> None:
    node = tree
    for depth, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: '{'.'.join(path[: depth + 1])}' is not a section")
        node = child
    node[path[-1]] = value


def _deep_merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value


def _describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines)
