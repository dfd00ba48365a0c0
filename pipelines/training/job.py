"""``train``: Ray Data → Ray Train (TorchTrainer, LoRA) → evaluation, tracked in one MLflow run.

The driver prepares data and the MLflow run; workers run :func:`train_loop`, logging to MLflow
from rank 0 only (Train v2 has no MLflow callback); the driver then rebuilds the model from the
last checkpoint, evaluates it on the test days and logs the classifier directory.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.data
import ray.train
import ray.train.torch
import torch
from safetensors.torch import load_file

from pipelines.config import OncallConfig
from pipelines.contract.text import TextBuilder
from pipelines.data.ownership import without_stale_ownership
from pipelines.data.tokenize import tokenized_splits
from pipelines.data.window import (
    TimeSplit,
    WindowStats,
    count_window,
    held_out_rows,
    read_window,
    replay_sample,
    summarise,
    train_labels,
    with_label_overrides,
)
from pipelines.errors import ConfigError, ModelError
from pipelines.jobs.ray_runtime import ray_session
from pipelines.model.artifact import CLASSIFIER_DESCRIPTOR, LabelSet, save_classifier, saved_trainable_state
from pipelines.model.base import PRESETS, load_tokenizer
from pipelines.model.classifier import build_classifier, load_trainable_state
from pipelines.model.inference import TicketClassifier
from pipelines.training.loop import CHECKPOINT_PROGRESS, CHECKPOINT_STATE, FaultInjection, train_loop

# Every Ray Train worker imports this module to unpickle train_loop: modules that only the
# driver needs (MLflow, scikit-learn: ~1 s of imports per worker here) are imported where used.
if TYPE_CHECKING:
    from pipelines.evaluation.metrics import Evaluation

log = logging.getLogger(__name__)
# Train v2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default) and a fit returns one or two polls after the last report: ~2-3 s of a ~18 s fixed
# cost on a small CPU fit (benchmarks/train.py). A poll is one cheap RPC per worker. The driver's
# environment is read when fit() starts the controller; a value the user set wins.
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"


@dataclass(frozen=True)
class TrainRequest:
    archive_uri: str
    base_dir: Path
    since: dt.date | None = None
    until: dt.date | None = None
    fault: FaultInjection | None = None
    register: bool = True  # register the classifier as a new version with alias `challenger`
    # Incremental training: start from this classifier directory (same base), keep its tenants'
    # ids and grow the head for new ones.
    warm_start: Path | None = None
    replay_rows: int = 0  # labelled tickets sampled from before `since`, trained on with the window
    label_overrides: dict[str, str] = field(default_factory=dict)  # ticket_id → tenant (feedback)
    run_tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_id: str
    labels: LabelSet
    split: TimeSplit
    stats: WindowStats
    evaluation: Evaluation
    progress: dict[str, Any] = field(default_factory=dict)
    version: str | None = None  # the registered version, unless registration was skipped

    @property
    def model_uri(self) -> str:
        from pipelines.registry.tracking import MODEL_ARTIFACT

        return f"runs:/{self.run_id}/{MODEL_ARTIFACT}"

    @property
    def headline(self) -> dict[str, float]:
        keys = (
            "top1",
            "top3",
            "macro_f1",
            "ece",
            "majority_baseline_top1",
            "abstain_threshold",
            "coverage_at_threshold",
        )
        return {k: self.evaluation.metrics[k] for k in keys if k in self.evaluation.metrics}


def resolve_base(config: OncallConfig, base: str | None = None) -> Path:
    """``model.base`` (or ``base``): a preset name built by init-base, or a local directory."""
    name = base or config.model.base
    path = config.preset_bases_dir / name if name in PRESETS else Path(name)
    if not (path / "config.json").is_file():
        hint = (
            f"build it with 'oncall-router init-base --preset {name}'"
            if name in PRESETS
            else "point model.base at a Qwen3 checkpoint directory"
        )
        raise ModelError(f"base '{name}' not found at {path}: {hint}")
    return path


def train(config: OncallConfig, request: TrainRequest) -> TrainResult:
    """Train, evaluate and log one classifier; returns once the MLflow run is finished."""
    # Workers do not share the driver's working directory: every local path must be absolute.
    request = dataclasses.replace(request, base_dir=request.base_dir.resolve())
    with ray_session():
        return _train(config, request)


def _train(config: OncallConfig, request: TrainRequest) -> TrainResult:
    from pipelines.evaluation.job import log_evaluation, score_rows
    from pipelines.registry.packaging import CLASSIFIER_ARTIFACT, package_classifier
    from pipelines.registry.tracking import (
        EVALUATION_ARTIFACT,
        MODEL_ARTIFACT,
        ensure_experiment,
        tracking_client,
    )
    from pipelines.registry.versions import Registry

    if config.train.use_gpu and ray.cluster_resources().get("GPU", 0) <= 0:
        raise ConfigError("train.use_gpu is set (--gpu) but the Ray cluster has no GPUs")
    builder = TextBuilder.from_config(config.data)
    tokenizer = load_tokenizer(request.base_dir, max_length=config.model.max_length)
    client = tracking_client(config)
    experiment_id = ensure_experiment(client, config, config.registry.experiment)

    prepared = with_label_overrides(
        read_window(request.archive_uri, builder, request.since, request.until), request.label_overrides
    )
    replay = (
        replay_sample(
            request.archive_uri,
            builder,
            request.since,
            request.replay_rows,
            request.label_overrides,
            config.train.seed,
        )
        if request.since
        else None
    )
    prepared = (prepared.union(replay) if replay is not None else prepared).materialize()
    counts = count_window(prepared)
    split = TimeSplit.from_days(
        sorted(counts["day"].unique()), config.data.validation_days, config.data.test_days
    )
    marked = without_stale_ownership(prepared, split.train)
    if marked is not prepared:  # some tickets are now counted as stale: count again
        prepared, counts = marked, count_window(marked)
    labels = train_labels(counts, split)
    initial_state, known_labels = None, 0
    if request.warm_start is not None:
        initial_state, previous_labels = saved_trainable_state(request.warm_start, request.base_dir)
        labels, known_labels = previous_labels.extended(labels.tenants), len(previous_labels)
        log.info(
            "warm start from %s: %d known tenant(s), %d new",
            request.warm_start,
            known_labels,
            len(labels) - known_labels,
        )
    stats = summarise(counts, split, labels)
    log.info(
        "window %s … %s: %d rows, %d rejected, %d unresolved, %d tenants; train/validation/test rows %s",
        split.train[0],
        split.test[-1],
        stats.rows,
        sum(stats.rejected.values()),
        stats.unresolved,
        len(labels),
        dict(stats.labelled),
    )
    datasets = tokenized_splits(prepared, split, labels, request.base_dir, config.model.max_length)

    run = client.create_run(
        experiment_id, run_name=f"train-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}", tags=request.run_tags
    )
    run_id = run.info.run_id
    try:
        _log_inputs(client, run_id, config, request, split, labels, stats)
        loop_config = build_loop_config(
            config,
            request,
            labels,
            stats,
            pad_token_id=tokenizer.pad_token_id,
            run_id=run_id,
            initial_state=initial_state,
            known_labels=known_labels,
        )
        trainer = build_trainer(
            config,
            loop_config,
            {"train": datasets["train"], "validation": datasets["validation"]},
            name=f"train-{run_id}",
        )
        started = time.monotonic()
        result = trainer.fit()
        if result.checkpoint is None:
            raise ModelError(f"training finished without a checkpoint (error: {result.error})")
        client.log_metric(run_id, "train_seconds", time.monotonic() - started)
        with tempfile.TemporaryDirectory(prefix="oncall-train-") as staging:
            model_dir = Path(staging) / CLASSIFIER_ARTIFACT
            progress = _classifier_from_checkpoint(
                result.checkpoint, model_dir, config, request, labels, tokenizer, builder, split
            )
            evaluation, _ = score_rows(
                TicketClassifier.from_dir(model_dir), held_out_rows(prepared, split), config
            )
            _write_descriptor_fields(
                model_dir, {"abstain_threshold": evaluation.metrics["abstain_threshold"]}
            )
            log_evaluation(client, run_id, evaluation, "test", EVALUATION_ARTIFACT)
            (model_dir / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
            packaged = package_classifier(model_dir, Path(staging) / MODEL_ARTIFACT)
            client.log_artifacts(run_id, str(packaged), MODEL_ARTIFACT)
        client.set_terminated(run_id, status="FINISHED")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    version = Registry(config, client).register_run(run_id).version if request.register else None
    return TrainResult(run_id, labels, split, stats, evaluation, progress, version)


def build_loop_config(
    config: OncallConfig,
    request: TrainRequest,
    labels: LabelSet,
    stats: WindowStats,
    *,
    pad_token_id: int,
    run_id: str,
    initial_state: dict[str, torch.Tensor] | None = None,
    known_labels: int = 0,
) -> dict[str, Any]:
    """What :func:`train_loop` gets on every worker (plain values: it is sent to the workers)."""
    examples_per_step = config.train.batch_size * config.train.workers * config.train.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(stats.labelled["train"] / examples_per_step))
    return {
        "base_dir": str(request.base_dir),
        "num_labels": len(labels),
        "pad_token_id": pad_token_id,
        "model": config.model.model_dump(),
        "train": config.train.model_dump(),
        "class_counts": [stats.train_tenant_counts[t] for t in labels.tenants],
        "total_steps": steps_per_epoch * config.train.epochs,
        "tracking_uri": config.tracking_uri,
        "run_id": run_id,
        "fault": asdict(request.fault) if request.fault else None,
        "initial_state": initial_state,
        "known_labels": known_labels,
    }


def build_trainer(
    config: OncallConfig,
    loop_config: dict[str, Any],
    datasets: dict[str, ray.data.Dataset],
    *,
    name: str,
) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer running :func:`train_loop` on ``datasets`` ("train" is split over the
    workers, "validation" is read whole by rank 0); checkpoints under ``config.ray_storage_dir``."""
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)
    return ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.train.workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={
                "CPU": config.train.cpus_per_worker,
                **({"GPU": 1} if config.train.use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(config.ray_storage_dir.resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def _log_inputs(
    client: Any,
    run_id: str,
    config: OncallConfig,
    request: TrainRequest,
    split: TimeSplit,
    labels: LabelSet,
    stats: WindowStats,
) -> None:
    from pipelines.registry.tracking import flatten_params

    params = flatten_params(
        "",
        {
            "model": config.model.model_dump(),
            "train": config.train.model_dump(),
            "data": config.data.model_dump(),
        },
    )
    params.update(
        {
            "archive": request.archive_uri,
            "base": str(request.base_dir),
            "window.train": f"{split.train[0]}..{split.train[-1]}",
            "window.validation": f"{split.validation[0]}..{split.validation[-1]}",
            "window.test": f"{split.test[0]}..{split.test[-1]}",
            "num_labels": str(len(labels)),
            "warm_start": str(request.warm_start or ""),
            "replay_rows": str(request.replay_rows),
            "label_overrides": str(len(request.label_overrides)),
        }
    )
    for name, value in params.items():
        client.log_param(run_id, name, value)
    for name, value in stats.as_metrics().items():
        client.log_metric(run_id, name, float(value))
    with tempfile.TemporaryDirectory() as folder:
        client.log_artifact(run_id, str(labels.save(Path(folder))))


def _classifier_from_checkpoint(
    checkpoint: ray.train.Checkpoint,
    out: Path,
    config: OncallConfig,
    request: TrainRequest,
    labels: LabelSet,
    tokenizer: Any,
    builder: TextBuilder,
    split: TimeSplit,
) -> dict[str, Any]:
    """Rebuild the trained classifier from the last checkpoint and save it as a classifier dir."""
    model = build_classifier(
        request.base_dir, len(labels), pad_token_id=tokenizer.pad_token_id, model_config=config.model
    )
    with checkpoint.as_directory() as folder:
        load_trainable_state(model, load_file(Path(folder) / CHECKPOINT_STATE))
        progress = json.loads((Path(folder) / CHECKPOINT_PROGRESS).read_text())
    save_classifier(
        model,
        tokenizer,
        labels,
        out,
        base_dir=request.base_dir,
        text=builder.settings(),
        max_length=config.model.max_length,
        extra={
            "window": {
                "train": [str(split.train[0]), str(split.train[-1])],
                "test": [str(split.test[0]), str(split.test[-1])],
            }
        },
    )
    return progress


def _write_descriptor_fields(model_dir: Path, fields: dict[str, Any]) -> None:
    path = model_dir / CLASSIFIER_DESCRIPTOR
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}, indent=2) + "\n")
