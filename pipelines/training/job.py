"""``train``: Ray Data → Ray Train (TorchTrainer, LoRA) → evaluation, tracked in one MLflow run.

``train`` = ``prepare_window`` (read, label, split, tokenize) → ``fit`` (workers run
:func:`~pipelines.training.loop.train_loop`, rank 0 logging into the run) → ``publish`` (the
classifier rebuilt from the last checkpoint, evaluated on the test days, packaged and logged),
then registration when asked. The run ends ``FINISHED`` before the version is registered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.data
import ray.train
import ray.train.torch
import torch
from safetensors.torch import load_file

from pipelines.config import OncallConfig
from pipelines.contract.days import DayWindow
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
    unreadable_files_named,
    valid_labelled,
    with_label_overrides,
)
from pipelines.errors import ConfigError, ModelError
from pipelines.evaluation.job import fit_calibration, log_evaluation, score_rows, train_baseline
from pipelines.evaluation.metrics import Evaluation
from pipelines.faults import Faults
from pipelines.model.artifact import CLASSIFIER_DESCRIPTOR, LabelSet, save_classifier, saved_trainable_state
from pipelines.model.base import PRESETS, load_tokenizer
from pipelines.model.classifier import build_classifier, load_trainable_state
from pipelines.model.inference import TicketClassifier
from pipelines.ray_runtime import ray_session
from pipelines.registry.packaging import CLASSIFIER_ARTIFACT, package_classifier
from pipelines.registry.tracking import EVALUATION_ARTIFACT, MODEL_ARTIFACT, RunLog, Tracker
from pipelines.registry.versions import Registry, window_params
from pipelines.training.loop import CHECKPOINT_PROGRESS, CHECKPOINT_STATE, LoopConfig, train_loop

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
    faults: Faults = field(default_factory=Faults)  # tests only: `train.worker_exit`
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


@dataclass(frozen=True)
class PreparedWindow:
    """What :func:`prepare_window` made of the window: everything ``fit`` and ``publish`` need."""

    rows: ray.data.Dataset  # prepared rows, valid and rejected (materialized)
    split: TimeSplit
    labels: LabelSet
    stats: WindowStats
    tokenized: dict[str, ray.data.Dataset]  # train / validation / test
    builder: TextBuilder
    tokenizer: Any  # the base's tokenizer, saved with the classifier
    # Warm start: the previous classifier's trainable state, whose head knew `known_labels`.
    initial_state: dict[str, torch.Tensor] | None = None
    known_labels: int = 0


@dataclass(frozen=True)
class Published:
    evaluation: Evaluation  # on the test days
    progress: dict[str, Any]  # of the last checkpoint (epoch, step, resumed_from_step)


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
    tracker = Tracker(config)
    with ray_session(config):
        if config.train.use_gpu and ray.cluster_resources().get("GPU", 0) <= 0:
            raise ConfigError("train.use_gpu is set (--gpu) but the Ray cluster has no GPUs")
        # Datasets
        window = prepare_window(config, request)
        run_name = f"train-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        with tracker.run(config.registry.experiment, run_name=run_name, tags=request.run_tags) as run:
            _log_inputs(run, config, request, window)
            # Training
            log.info("training run %s: %d epoch(s) with Ray Train", run.run_id, config.train.epochs)
            checkpoint = fit(config, request, window, run)
            # Evaluation and the logged classifier
            log.info("evaluating run %s and logging its classifier", run.run_id)
            published = publish(config, request, window, checkpoint, run)
        # Registration (of the finished run)
        version = (
            Registry(config, tracker.client).register_run(run.run_id).version if request.register else None
        )
    return TrainResult(
        run.run_id,
        window.labels,
        window.split,
        window.stats,
        published.evaluation,
        published.progress,
        version,
    )


def prepare_window(config: OncallConfig, request: TrainRequest) -> PreparedWindow:
    """The window's rows (with feedback labels and replayed tickets), its time split, labels
    (grown from the warm start's), counts, and the tokenized splits."""
    builder = config.data.text_builder()
    tokenizer = load_tokenizer(request.base_dir, max_length=config.model.max_length)
    # Rows
    rows = _read_rows(config, request, builder)
    counts = count_window(rows)
    split = TimeSplit.from_days(
        sorted(counts["day"].unique()), config.data.validation_days, config.data.test_days
    )
    marked = without_stale_ownership(rows, split.train)
    if marked is not rows:  # some tickets are now counted as stale: count again
        rows, counts = marked, count_window(marked)
    # Labels
    labels, initial_state, known_labels = train_labels(counts, split), None, 0
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
    # Tokens (train / validation / test)
    return PreparedWindow(
        rows=rows,
        split=split,
        labels=labels,
        stats=stats,
        tokenized=tokenized_splits(rows, split, labels, request.base_dir, config.model.max_length),
        builder=builder,
        tokenizer=tokenizer,
        initial_state=initial_state,
        known_labels=known_labels,
    )


def _read_rows(config: OncallConfig, request: TrainRequest, builder: TextBuilder) -> ray.data.Dataset:
    """The window's prepared rows, feedback labels applied, plus the replayed earlier tickets."""
    rows = with_label_overrides(
        read_window(request.archive_uri, builder, request.since, request.until, config.object_store),
        request.label_overrides,
    )
    if request.since:
        replay = replay_sample(
            request.archive_uri,
            builder,
            request.since,
            request.replay_rows,
            request.label_overrides,
            config.train.seed,
            config.object_store,
        )
        rows = rows.union(replay) if replay is not None else rows
    with unreadable_files_named(request.archive_uri, request.since, request.until, config.object_store):
        return rows.materialize()


def fit(
    config: OncallConfig, request: TrainRequest, window: PreparedWindow, run: RunLog
) -> ray.train.Checkpoint:
    """The TorchTrainer run over the tokenized train/validation splits; its last checkpoint."""
    loop_config = build_loop_config(
        config,
        request,
        window.labels,
        window.stats,
        pad_token_id=window.tokenizer.pad_token_id,
        run_id=run.run_id,
        initial_state=window.initial_state,
        known_labels=window.known_labels,
    )
    datasets = {"train": window.tokenized["train"], "validation": window.tokenized["validation"]}
    trainer = build_trainer(config, loop_config, datasets, name=f"train-{run.run_id}")
    started = time.monotonic()
    result = trainer.fit()
    if result.checkpoint is None:
        raise ModelError(f"training finished without a checkpoint (error: {result.error})")
    run.metrics({"train_seconds": time.monotonic() - started})
    return result.checkpoint


def publish(
    config: OncallConfig,
    request: TrainRequest,
    window: PreparedWindow,
    checkpoint: ray.train.Checkpoint,
    run: RunLog,
) -> Published:
    """The classifier directory from ``checkpoint``, calibrated on the validation days (its
    temperature and abstain threshold written into the directory), evaluated on the test days
    next to the classic baseline trained on the same training days (logged), packaged and
    logged to ``run``."""
    split = window.split
    with tempfile.TemporaryDirectory(prefix="oncall-train-") as staging:
        # Checkpoint → classifier directory
        model_dir = Path(staging) / CLASSIFIER_ARTIFACT
        progress = _classifier_from_checkpoint(checkpoint, model_dir, config, request, window)
        classifier = TicketClassifier.from_dir(model_dir)
        # Calibration on the validation days
        calibration = fit_calibration(
            classifier, valid_labelled(window.rows, split.validation).to_pandas(), config
        )
        _write_descriptor_fields(model_dir, calibration.descriptor_fields())
        classifier.temperature, classifier.abstain_threshold = (
            calibration.temperature,
            calibration.abstain_threshold,
        )
        # Evaluation on the test days, with the classic baseline
        baseline = train_baseline(valid_labelled(window.rows, split.train), config)
        evaluation, _ = score_rows(classifier, held_out_rows(window.rows, split), config, baseline)
        evaluation.metrics.update(calibration.as_metrics())
        run.metrics({"resumed_from_step": progress.get("resumed_from_step", 0)})
        run.tags({"checkpoint": _checkpoint_uri(checkpoint)})
        log_evaluation(run, evaluation, "test", EVALUATION_ARTIFACT)
        (model_dir / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
        # Package
        run.artifacts(package_classifier(model_dir, Path(staging) / MODEL_ARTIFACT), MODEL_ARTIFACT)
    return Published(evaluation, progress)


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
) -> LoopConfig:
    """What :func:`train_loop` gets on every worker."""
    examples_per_step = config.train.batch_size * config.train.workers * config.train.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(stats.labelled["train"] / examples_per_step))
    return LoopConfig(
        base_dir=request.base_dir,
        num_labels=len(labels),
        pad_token_id=pad_token_id,
        model=config.model.model_copy(deep=True),
        train=config.train.model_copy(deep=True),
        class_counts=tuple(stats.train_tenant_counts[t] for t in labels.tenants),
        total_steps=steps_per_epoch * config.train.epochs,
        tracking_uri=config.tracking_uri,
        run_id=run_id,
        faults=request.faults,
        initial_state=initial_state,
        known_labels=known_labels,
    )


def build_trainer(
    config: OncallConfig,
    loop_config: LoopConfig,
    datasets: dict[str, ray.data.Dataset],
    *,
    name: str,
) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer running :func:`train_loop` on ``datasets`` ("train" is split over the
    workers, "validation" is read whole by rank 0); checkpoints under ``config.train_storage``."""
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)
    return ray.train.torch.TorchTrainer(
        # Bound here, not passed as train_loop_config: Train v2 keeps that as a JSON dict (run
        # state export), and the loop takes a typed LoopConfig.
        functools.partial(train_loop, loop_config),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.train.workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker={
                "CPU": config.train.cpus_per_worker,
                **({"GPU": 1} if config.train.use_gpu else {}),
                **config.train.worker_resources,
            },
            placement_strategy=config.train.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            **_storage_options(config),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def _storage_options(config: OncallConfig) -> dict[str, Any]:
    """``storage_path`` (and its filesystem, with the object store's endpoint) of Ray Train's
    checkpoints: every node must reach it, so ``s3://`` on a cluster whose nodes share no disk."""
    filesystem, path = config.object_store.resolve(config.train_storage)
    return {"storage_path": path, "storage_filesystem": filesystem}


def _checkpoint_uri(checkpoint: ray.train.Checkpoint) -> str:
    """Where the published checkpoint lives, as a URI (``s3://…`` on object storage)."""
    scheme = checkpoint.filesystem.type_name
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def _log_inputs(run: RunLog, config: OncallConfig, request: TrainRequest, window: PreparedWindow) -> None:
    """Config, window and request as params; the window's counts as metrics; the labels file."""
    split = window.split
    run.params(
        {
            "model": config.model.model_dump(),
            "train": config.train.model_dump(),
            "data": config.data.model_dump(),
        }
    )
    run.params(
        {
            "archive": request.archive_uri,
            "base": str(request.base_dir),
            **window_params(
                DayWindow.of(split.train), DayWindow.of(split.validation), DayWindow.of(split.test)
            ),
            "num_labels": str(len(window.labels)),
            "warm_start": str(request.warm_start or ""),
            "replay_rows": str(request.replay_rows),
            "label_overrides": str(len(request.label_overrides)),
        }
    )
    run.metrics(window.stats.as_metrics())
    with tempfile.TemporaryDirectory() as folder:
        run.artifact(window.labels.save(Path(folder)))


def _classifier_from_checkpoint(
    checkpoint: ray.train.Checkpoint,
    out: Path,
    config: OncallConfig,
    request: TrainRequest,
    window: PreparedWindow,
) -> dict[str, Any]:
    """Rebuild the trained classifier from the last checkpoint and save it as a classifier dir;
    returns the checkpoint's progress."""
    model = build_classifier(
        request.base_dir,
        len(window.labels),
        pad_token_id=window.tokenizer.pad_token_id,
        model_config=config.model,
    )
    with checkpoint.as_directory() as folder:
        load_trainable_state(model, load_file(Path(folder) / CHECKPOINT_STATE))
        progress = json.loads((Path(folder) / CHECKPOINT_PROGRESS).read_text())
    split = window.split
    save_classifier(
        model,
        window.tokenizer,
        window.labels,
        out,
        base_dir=request.base_dir,
        text=window.builder.settings(),
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
