"""One typed configuration tree for every job, and the one source of its defaults and help.

Precedence, lowest first: the model's defaults (below), an optional ``--config FILE``,
``ONCALL_*`` environment variables, explicit command-line overrides. The defaults live in the
model only: ``platform/config/default.yaml`` is rendered from it (:func:`render_defaults_yaml`,
``python -m pipelines.config``), and the CLI takes each option's help from :func:`field_doc`.
Nothing here runs at import time: :func:`load_config` is called by the CLI (or a test) and the
result is passed down explicitly.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from pipelines.contract.columns import TEXT_COLUMNS
from pipelines.contract.storage import ObjectStore
from pipelines.contract.text import TextBuilder
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "ONCALL_"
ENV_NESTING = "__"
# Short environment names documented in the README, mapped to their config path.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "ONCALL_DATA_DIR": ("data_dir",),
    "ONCALL_SERVE_TOKENS": ("serve", "auth_tokens"),
    "ONCALL_TRACKING_URI": ("registry", "tracking_uri"),
    "ONCALL_LOG_LEVEL": ("logging", "level"),
    "ONCALL_S3_ENDPOINT_URL": ("storage", "endpoint_url"),
}
TOKENS_PATH = ("serve", "auth_tokens")
SECRET_KEYS = ("serve.auth_tokens",)  # validation errors never show their values
# Variables with the prefix that are not configuration (read by the test-suite, the CLI or the
# notebooks).
ENV_NOT_CONFIG = (
    "ONCALL_TEST_",
    "ONCALL_CONFIG",
    "ONCALL_NOTEBOOK_",
    "ONCALL_ROUTER_URL",
)


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
    max_field_chars: int = Field(
        default=160, ge=8, description="Cap on every field but description (title, service, ...)."
    )
    max_description_chars: int = Field(
        default=400, ge=16, description="Longer descriptions keep their head; the tail is cut."
    )
    validation_days: int = Field(default=2, ge=1, description="Newest days before the test days: validation.")
    test_days: int = Field(default=2, ge=1, description="Newest days of the training window: test.")

    @field_validator("text_fields")
    @classmethod
    def _known_text_fields(cls, fields: list[str]) -> list[str]:
        unknown = [f for f in fields if f not in TEXT_COLUMNS]
        if unknown:
            raise ValueError(f"unknown ticket column(s) {unknown}; choose from {list(TEXT_COLUMNS)}")
        if "title" not in fields:
            raise ValueError("must include 'title' (the only required text column)")
        if len(set(fields)) != len(fields):
            raise ValueError("lists a column twice")
        return fields

    def text_builder(self) -> TextBuilder:
        """The model text these settings describe (contract is a leaf: it knows no config)."""
        return TextBuilder(
            fields=tuple(self.text_fields),
            max_field_chars=self.max_field_chars,
            max_description_chars=self.max_description_chars,
        )


class LoraConfig(_Section):
    r: int = Field(default=8, ge=1, description="Rank of the adapter matrices.")
    alpha: int = Field(default=16, ge=1, description="Adapter scale numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get adapters: all linear projections of a Qwen3 block by default.",
    )


class ModelConfig(_Section):
    base: str = Field(
        default="tiny",
        description="A preset name ('tiny', built by `oncall-router init-base`) or a local Qwen3 "
        "checkpoint directory.",
    )
    max_length: int = Field(
        default=128, ge=8, le=32768, description="Tokens per ticket; longer tickets are truncated."
    )
    finetune: Literal["lora", "full"] = Field(
        default="lora", description="LoRA adapters (the head `score` is trained fully) or every weight."
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Adapters (peft), when finetune is lora."
    )
    tokenizer_vocab_size: int = Field(
        default=8000, ge=300, description="BPE vocabulary of the tiny preset's tokenizer."
    )


class TrainConfig(_Section):
    workers: int = Field(default=1, ge=1, description="Ray Train workers.")
    use_gpu: bool = Field(default=False, description="One GPU per Ray Train worker.")
    cpus_per_worker: float = Field(default=1.0, gt=0, description="Logical CPUs per Ray Train worker.")
    epochs: int = Field(default=3, ge=1, description="Training epochs.")
    batch_size: int = Field(default=32, ge=1, description="Tickets per worker in one forward pass.")
    grad_accum_steps: int = Field(
        default=1, ge=1, description="Forward passes whose gradients make one optimizer step."
    )
    lr: float = Field(default=2e-3, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(
        default=0.01, ge=0, description="AdamW weight decay (not on biases and norms)."
    )
    warmup_ratio: float = Field(
        default=0.06, ge=0, lt=1, description="Share of the steps with a linear warm-up, then cosine decay."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradients are clipped to this norm.")
    class_weighting: Literal["none", "inverse_sqrt", "inverse"] = Field(
        default="inverse_sqrt",
        description="Loss weight of a tenant from its ticket count n: 1, 1/sqrt(n), 1/n.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="Where Ray places the workers: PACK (few nodes), SPREAD, STRICT_SPREAD (one per node).",
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each worker needs besides CPU/GPU, e.g. {trainer: 1} to "
        "keep training on the nodes started with that resource.",
    )
    checkpoints_to_keep: int = Field(default=2, ge=1, description="Ray Train checkpoints kept per run.")
    max_failures: int = Field(
        default=1, ge=0, description="Worker failures a fit survives (it resumes from the last checkpoint)."
    )
    seed: int = Field(default=0, description="Seed of the new weights, the shuffling and the replay sample.")
    new_tenant_init: Literal["mean", "random"] = Field(
        default="mean",
        description="Head rows of tenants new to a warm start: mean (the centred mean representation of "
        "their training tickets, scaled like the known rows) or random (benchmarks/RESULTS.md compares).",
    )


class EvaluateConfig(_Section):
    target_accuracy: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Accuracy the abstain threshold must reach on routed tickets (fit on the validation "
        "days, measured on the test days).",
    )
    min_threshold_tickets: int = Field(
        default=200,
        ge=1,
        description="Fewer validation tickets than this: no temperature is fit and the abstain threshold "
        "is fallback_abstain_threshold (logged, and flagged as the metric threshold_fallback).",
    )
    fallback_abstain_threshold: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="The conservative abstain threshold of a classifier with too few validation tickets.",
    )
    baseline_max_train_rows: int = Field(
        default=20_000,
        ge=2,
        description="Training tickets the classic baseline (TF-IDF + linear SVM) learns from at most: a "
        "deterministic sample of the training days beyond it.",
    )
    top_k: int = Field(
        default=3, ge=1, description="k of the top-k accuracy; ranked tenants in rescored rows."
    )
    confusion_tenants: int = Field(default=20, ge=2, description="Tenants shown in the confusion matrix.")


class RegistryConfig(_Section):
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking and registry URI; default sqlite:///<data_dir>/mlflow.db "
        "(artifacts in <data_dir>/mlartifacts).",
    )
    model_name: str = Field(default="oncall-router", min_length=1, description="Registered model name.")
    experiment: str = Field(default="train", min_length=1, description="MLflow experiment of training runs.")


class PromotionConfig(_Section):
    """Rules of the gate that moves alias ``champion`` to a challenger."""

    top1_tolerance: float = Field(default=0.01, ge=0, le=1, description="Allowed top-1 drop vs the champion.")
    recall_drop: float = Field(default=0.10, ge=0, le=1, description="Allowed recall drop of one tenant.")
    min_support: int = Field(default=20, ge=1, description="Tenants with fewer test tickets are not judged.")
    first_version_margin: float = Field(
        default=0.20, ge=0, le=1, description="A first version must beat the majority baseline by this."
    )
    first_version_baseline: Literal["majority", "classic"] = Field(
        default="majority",
        description="What a first version must beat. majority: the majority baseline by "
        "first_version_margin. classic: that, and also reach the top-1 of the classic baseline "
        "(TF-IDF + linear SVM trained on its training days) on the same gate tickets.",
    )
    golden_set: str | None = Field(
        default=None,
        description="A fixed labelled ticket archive (same contract) added to every gate evaluation.",
    )


MIN_TOKEN_CHARS = 16
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750's b64token


def check_token(token: str, where: str) -> None:
    """A ValueError naming ``where`` (never the token) for a token too short or with characters
    outside RFC 6750's token alphabet (so no comma, no whitespace)."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{where} is shorter than {MIN_TOKEN_CHARS} characters")
    if not _TOKEN_CHARS.match(token):
        raise ValueError(
            f"{where} has a character outside A-Z a-z 0-9 - . _ ~ + / = (tokens are comma-separated)"
        )


def read_token_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"serve.auth_tokens_file: cannot read {path}: {type(exc).__name__}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError(f"serve.auth_tokens_file: {path} holds no token")
    for number, token in enumerate(tokens, start=1):
        try:
            check_token(token, f"token {number}")
        except ValueError as exc:
            raise ConfigError(f"serve.auth_tokens_file: {path}: {exc}") from None
    return tokens


class InferenceConfig(_Section):
    """How the scoring paths (Serve model replicas, rescore actors) run a classifier. Training
    and evaluation always score with fp32 eager on a CPU, the reference the int8 answers are
    checked against."""

    cpu_runtime: Literal["auto", "eager", "int8"] = Field(
        default="auto",
        description="On a CPU: eager (fp32 PyTorch), int8 (dynamic int8 quantization of the merged "
        "model's linear layers, each ticket scored alone; test top-1 within 0.5 point of eager) or "
        "auto (int8 for a base of hidden size >= 512, where it is faster; eager below). See "
        "benchmarks/RESULTS.md. A GPU runs bf16.",
    )


class ServeConfig(_Section):
    host: str = Field(default="127.0.0.1", description="Interface the routing endpoint listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the routing endpoint.")
    alias: str = Field(default="champion", description="Registry alias the replicas serve and follow.")
    max_batch_size: int = Field(default=32, ge=1, description="Tickets a model replica scores at once.")
    batch_wait_timeout_s: float = Field(
        default=0.002, ge=0, description="How long a lone request waits for company (benchmarks/RESULTS.md)."
    )
    max_tickets_per_request: int = Field(
        default=256, ge=1, description="/v1/route/batch answers 413 above this."
    )
    top_k: int = Field(default=3, ge=1, description="Ranked tenants in each answer.")
    min_replicas: int = Field(default=1, ge=0, description="Fewest model replicas (autoscaling).")
    max_replicas: int = Field(default=2, ge=1, description="Most model (and ingress) replicas.")
    target_ongoing_requests: int = Field(
        default=16, ge=1, description="Requests in flight per model replica that autoscaling aims at."
    )
    alias_poll_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between a replica's checks of the alias (hot swap)."
    )
    replica_cpus: float = Field(default=1.0, gt=0, description="Logical CPUs per model replica.")
    replica_gpus: float = Field(default=0.0, ge=0, description="GPUs per model replica (0: CPU).")
    throughput_optimized: bool = Field(
        default=True,
        description="A local Ray started to serve gets RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (direct "
        "ingress, gRPC between deployments); on a cluster, set it in the nodes' environment.",
    )
    auth_tokens: list[str] = Field(
        default_factory=list,
        repr=False,  # never in a repr, a log line or an error message
        description="Bearer tokens the endpoint accepts (in the environment: comma-separated; a token "
        f"is at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 - . _ ~ + / =). No tokens here nor "
        "in auth_tokens_file: no auth, which only a loopback host or allow_unauthenticated permits.",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        description="A file of more tokens, one per line (a mounted Kubernetes Secret); read by each "
        "ingress replica when it starts.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Listen on a non-loopback host without tokens (a loud warning at start); without "
        "it, serve refuses to.",
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Largest request body (413 above it)."
    )
    max_queued_requests: int = Field(
        default=512,
        ge=1,
        description="Requests waiting for a replica, per caller, before new ones get 503 with Retry-After.",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A model call not answered by then gets 504 from the ingress (Serve's own proxy "
        "timeout is set 5 s after the longer of this and feedback_timeout_s).",
    )
    feedback_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for the feedback database (503 after it)."
    )
    feedback_db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/feedback.db."
    )

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _tokens_are_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            for number, token in enumerate(value, start=1):
                if not isinstance(token, str):  # YAML made a number of it: say so, never show it
                    raise ValueError(f"token {number} is not a string (quote it)")
        return value

    @field_validator("auth_tokens")
    @classmethod
    def _valid_tokens(cls, tokens: list[str]) -> list[str]:
        for number, token in enumerate(tokens, start=1):
            check_token(token, f"token {number}")
        return tokens

    def tokens(self) -> list[str]:
        """``auth_tokens`` and the tokens of ``auth_tokens_file`` (blank lines and ``#`` comments
        skipped); a file that cannot be read or holds no valid token is a ConfigError."""
        found = list(self.auth_tokens)
        if self.auth_tokens_file is not None:
            found += read_token_file(self.auth_tokens_file)
        return found


class RescoreConfig(_Section):
    """Bulk scoring into the scored table: Apache Iceberg in a SQL catalog, one atomic commit
    per (model version, day)."""

    out: str | None = Field(
        default=None,
        description="Warehouse of the scored table (its data and metadata files): a local directory or "
        "s3://bucket/prefix; default <data_dir>/scored.",
    )
    catalog_uri: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Iceberg SQL catalog (sqlite:///path.db, "
        "postgresql+psycopg://user@host/db in production; may hold a password, never logged); "
        "default sqlite:///<out>/catalog.db for a local out, sqlite:///<data_dir>/scored-catalog.db "
        "for an object-store out.",
    )
    table: str = Field(
        default="oncall.scored_tickets",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
        description="The scored table, namespace.name: scored rows (reject_reason null) and rejected "
        "rows (with their reason), partitioned by model_version and date.",
    )
    batch_size: int = Field(default=256, ge=1, description="Tickets per scoring batch.")
    actors: int = Field(default=2, ge=1, description="Scoring actors (at most one per GPU on GPUs).")
    cpus_per_actor: float = Field(default=0.5, gt=0, description="Logical CPUs per scoring actor.")
    misroute_confidence: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="A resolved ticket predicted for another tenant above this confidence is a misroute.",
    )
    on_bad_file: Literal["fail", "skip"] = Field(
        default="fail",
        description="fail: name a bad Parquet file and stop; skip: score the rest and list it.",
    )


class NightlyConfig(_Section):
    cron: str = Field(default="0 2 * * *", description="When `schedule` runs the nightly (cron, UTC).")
    replay_size: int = Field(default=20000, ge=0, description="Older tickets replayed next to the new days.")
    rescore_days: int = Field(default=7, ge=0, description="Newest days rescored by the champion (0: none).")
    quality_drop_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The nightly flags the champion's quality on its rescored days when, since the last "
        "nightly, the abstain rate rose or the mean confidence or a measured accuracy fell by more than this.",
    )


class FeedbackConfig(_Section):
    """Which answers of ``POST /v1/feedback`` the nightly trains on. Every answer is kept; a
    ticket's label is its latest answer."""

    new_tenants: Literal["reject", "hold", "accept"] = Field(
        default="hold",
        description="A label naming a tenant the champion does not know: reject (never trained on), "
        "hold (trained on once confirmed) or accept.",
    )
    confirmations: int = Field(
        default=3,
        ge=1,
        description="hold: a new tenant is confirmed once this many distinct tickets carry it, or two "
        "distinct sources named it.",
    )


class RetentionConfig(_Section):
    """What `oncall-router retention` (and the nightly's last step) removes. Never the data of a
    version holding alias champion, previous or challenger (or serve.alias), nor of a run or a
    process that may still be running."""

    checkpoint_runs_kept: int = Field(
        default=2,
        ge=0,
        description="Ray Train checkpoint directories (<ray.storage_path>/train-<run id>) of this many "
        "newest training runs are kept besides those of aliased versions and runs in progress.",
    )
    max_age_days: int = Field(
        default=7,
        ge=1,
        description="Scratch data untouched this long is removed: the logs of ended local Rays "
        "(<data_dir>/ray/sessions), oncall-* temp directories left by killed processes, and the "
        "checkpoints of training runs abandoned while RUNNING in MLflow.",
    )
    after_nightly: bool = Field(
        default=True, description="The nightly runs retention as its last step (a failure is reported)."
    )


class StorageConfig(_Section):
    """The S3-compatible object store behind ``s3://`` URIs (archive, scored table, Ray Train
    checkpoints). Credentials are not configuration: the standard AWS chain provides them
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance or pod role)."""

    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store (MinIO, Ceph, a local moto), e.g. "
        "http://127.0.0.1:9000; null: AWS itself (or AWS_ENDPOINT_URL).",
    )
    region: str | None = Field(default=None, description="Region of the buckets; null: the SDK's default.")

    def object_store(self) -> ObjectStore:
        return ObjectStore(endpoint_url=self.endpoint_url, region=self.region)


class RayConfig(_Section):
    """Which Ray the commands use."""

    address: str | None = Field(
        default=None,
        description="A running cluster to join (ray://host:10001, host:6379 or 'auto'); null: "
        "RAY_ADDRESS if set, else a fresh local Ray started by the command. A cluster with token "
        "auth (Ray's default for `ray start --head`) needs RAY_AUTH_MODE=token and the token "
        "(RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) in the environment.",
    )
    storage_path: str | None = Field(
        default=None,
        description="Ray Train's run storage (checkpoints): a directory every node can reach; "
        "s3://bucket/prefix on a cluster, whose nodes share no disk; default <data_dir>/ray.",
    )


class LoggingConfig(_Section):
    """Log lines of every command (on stderr) and of the Serve replicas."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe log level shown."
    )
    format: Literal["text", "json"] = Field(
        default="text",
        description="text: readable lines (compact on a terminal); json: one object per line with "
        "time, level, logger and message, for commands and Serve replicas alike.",
    )
    ray_output: Literal["files", "console"] = Field(
        default="files",
        description="Output of Ray's worker processes: files (the Ray session's logs/ directory, "
        "under <data_dir>/ray/sessions when Ray is started here; named once at start) or console.",
    )
    progress_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="While a step runs and stderr is not a terminal, a 'still running' line this "
        "often (0: never).",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    def serve_logging(self) -> dict[str, str]:
        """The ``logging_config`` of a Serve deployment (Ray's ``LoggingConfig`` as a dict)."""
        return {"encoding": self.format.upper(), "log_level": self.level}


class OncallConfig(_Section):
    data_dir: Path = Field(
        default=Path(".oncall"),
        validate_default=True,
        description="Directory of every embedded store: mlflow.db, mlartifacts/, ray/, feedback.db, "
        "bases/, archive/.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="The ticket archive and the model text.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model and how it is tuned.")
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Training: Ray Train workers, optimizer, checkpoints."
    )
    evaluate: EvaluateConfig = Field(
        default_factory=EvaluateConfig, description="Evaluation of a trained classifier."
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="MLflow tracking and registry."
    )
    promotion: PromotionConfig = Field(
        default_factory=PromotionConfig, description="The gate that moves alias `champion` to a challenger."
    )
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="How Serve replicas and rescore actors run the model."
    )
    serve: ServeConfig = Field(default_factory=ServeConfig, description="The Ray Serve routing endpoint.")
    rescore: RescoreConfig = Field(default_factory=RescoreConfig, description="Bulk scoring of archives.")
    nightly: NightlyConfig = Field(default_factory=NightlyConfig, description="The online-learning loop.")
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig, description="Which routing feedback the nightly trains on."
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="Cleanup of old checkpoints and scratch data, never the aliased versions'.",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Object storage behind s3:// URIs."
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster the commands use.")
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Log lines, progress and where Ray's output goes."
    )

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
    def train_storage(self) -> str:
        """Ray Train's storage_path: configured (``s3://`` on a cluster) or under data_dir."""
        return self.ray.storage_path or str(self.ray_storage_dir)

    @property
    def object_store(self) -> ObjectStore:
        return self.storage.object_store()

    @property
    def ray_sessions_dir(self) -> Path:
        """Ray's temp dir when it is started here: ``session_*/logs`` holds its processes' output."""
        return self.ray_storage_dir / "sessions"

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
) -> OncallConfig:
    """Merge the model's defaults, YAML files (later ones win), environment and explicit
    overrides into one validated tree.

    ``overrides`` uses dotted keys (``{"train.epochs": 2, "data_dir": "/x"}``); ``None`` values
    are ignored so CLI options that were not given do not override anything.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
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
            value: Any = _parse_tokens(raw, name) if path == TOKENS_PATH else _parse_env_value(raw)
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


def _parse_tokens(raw: str, name: str) -> list[str]:
    """Comma-separated tokens, never parsed as YAML (an all-digit token stays text). Set but
    holding no token is an error: only an unset variable leaves auth off."""
    tokens = [token.strip() for token in raw.split(",") if token.strip()]
    if not tokens:
        raise ConfigError(
            f"{name} is set but holds no token (comma-separated: tok1,tok2); unset it to run without auth"
        )
    return tokens


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
            shown = "" if key.startswith(SECRET_KEYS) else f" (got {error.get('input')!r})"
            lines.append(f"  {key}: {error['msg']}{shown}")
    return "\n".join(lines)


# --- The documentation of every key: CLI help and default.yaml come from here. -------------------

YAML_WIDTH = 100
_YAML_HEADER = """\
# oncall-router: the default configuration (the embedded default: one machine, nothing to install).
# Rendered from the model in pipelines/config.py, where the defaults live; a test keeps this file
# equal to `python -m pipelines.config`. Loading it changes nothing: copy the keys you change into
# your own file and pass it with `--config FILE` (or $ONCALL_CONFIG).
#
# Precedence, lowest first: these defaults, `--config FILE`, environment variables
# ONCALL_<SECTION>__<KEY> (values parsed as YAML, e.g. ONCALL_TRAIN__EPOCHS=5,
# ONCALL_DATA__TEXT_FIELDS='[title, service]'), then command-line options. A few keys have a
# short environment name as well, given at the key.
# An unknown key or a wrong type is an error that names the key.
"""


@dataclass(frozen=True)
class FieldDoc:
    """A config key as the CLI and default.yaml document it."""

    key: str
    description: str
    default: Any  # JSON-able: a Path becomes a string
    choices: tuple[str, ...] = ()
    env: str | None = None  # the short environment name, where there is one

    @property
    def default_text(self) -> str:
        return yaml_scalar(self.default)


def field_doc(key: str) -> FieldDoc:
    """The documentation of a dotted key such as ``train.epochs``; a KeyError names an unknown one."""
    model: type[BaseModel] = OncallConfig
    *sections, name = key.split(".")
    try:
        for section in sections:
            found = _section_model(model.model_fields[section])
            if found is None:
                raise KeyError(key)
            model = found
        field = model.model_fields[name]
    except KeyError:
        raise KeyError(f"no config key {key!r}") from None
    return _field_doc(key, field)


def render_defaults_yaml() -> str:
    """``platform/config/default.yaml``: every key with its default, its description above it."""
    lines = _YAML_HEADER.splitlines()
    _render_fields(OncallConfig, "", lines)
    return "\n".join(lines) + "\n"


def yaml_scalar(value: Any) -> str:
    """One value as YAML on one line (``[a, b]``, ``null``, ``0.002``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=sys.maxsize).removesuffix("...\n").strip()


def _render_fields(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    indent = "  " * prefix.count(".")
    for name, field in model.model_fields.items():
        section = _section_model(field)
        doc = _field_doc(prefix + name, field)
        if not prefix:
            lines.append("")
        comment = " ".join(filter(None, (doc.description, _choices_note(doc), _env_note(doc))))
        lines.extend(f"{indent}# {line}" for line in textwrap.wrap(comment, YAML_WIDTH - len(indent) - 2))
        if section is None:
            lines.append(f"{indent}{name}: {doc.default_text}")
        else:
            lines.append(f"{indent}{name}:")
            _render_fields(section, f"{prefix}{name}.", lines)


def _field_doc(key: str, field: FieldInfo) -> FieldDoc:
    literal = get_origin(field.annotation) is Literal
    env = next((name for name, path in ENV_ALIASES.items() if ".".join(path) == key), None)
    default = None if _section_model(field) else field.get_default(call_default_factory=True)
    return FieldDoc(
        key=key,
        description=field.description or "",
        default=to_jsonable_python(default),
        choices=get_args(field.annotation) if literal else (),
        env=env,
    )


def _choices_note(doc: FieldDoc) -> str:
    return f"One of: {', '.join(doc.choices)}." if doc.choices else ""


def _env_note(doc: FieldDoc) -> str:
    return f"Environment: {doc.env}." if doc.env else ""


def _section_model(field: FieldInfo) -> type[_Section] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, _Section) else None


if __name__ == "__main__":  # python -m pipelines.config > platform/config/default.yaml
    sys.stdout.write(render_defaults_yaml())
