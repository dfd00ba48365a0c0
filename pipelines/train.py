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

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from safetensors.torch import load_file, save_file

from pipelines import trainer_core
from pipelines.config import ModelConfig, OncallConfig, TrainConfig
from pipelines.data import (
    TimeSplit,
    WindowStats,
    count_window,
    held_out_rows,
    read_window,
    replay_sample,
    summarise,
    tokenized_splits,
    train_labels,
    with_label_overrides,
    without_stale_ownership,
)
from pipelines.errors import ConfigError, ModelError
from pipelines.labels import LabelSet
from pipelines.model import (
    CLASSIFIER_DESCRIPTOR,
    PRESETS,
    build_classifier,
    grow_head,
    load_tokenizer,
    load_trainable_state,
    save_classifier,
    saved_trainable_state,
    trainable_state_dict,
)
from pipelines.predict import TicketClassifier
from pipelines.ray_runtime import ray_session
from pipelines.schema import TextBuilder

# Every Ray Train worker imports this module to unpickle train_loop: modules that only the
# driver needs (MLflow, scikit-learn: ~1 s of imports per worker here) are imported where used.
if TYPE_CHECKING:
    from pipelines.evaluate import Evaluation

log = logging.getLogger(__name__)

CHECKPOINT_STATE = "trainable.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_PROGRESS = "progress.json"
LOG_EVERY_STEPS = 50
# Train v2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default) and a fit returns one or two polls after the last report: ~2-3 s of a ~18 s fixed
# cost on a small CPU fit (benchmarks/train.py). A poll is one cheap RPC per worker. The driver's
# environment is read when fit() starts the controller; a value the user set wins.
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"


@dataclass(frozen=True)
class FaultInjection:
    """Test-only hook: the last worker kills its own process once, at a global step. The marker
    file records that it fired, so the restarted worker group runs on."""

    at_step: int
    marker: Path


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
        from pipelines.tracking import MODEL_ARTIFACT

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
    from pipelines.evaluate_run import log_evaluation, score_rows
    from pipelines.packaging import CLASSIFIER_ARTIFACT, package_classifier
    from pipelines.registry import Registry
    from pipelines.tracking import EVALUATION_ARTIFACT, MODEL_ARTIFACT, ensure_experiment, tracking_client

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
    from pipelines.tracking import flatten_params

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


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. Resumes from the last checkpoint after a failure."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    train_config = TrainConfig.model_validate(loop_config["train"])
    torch.manual_seed(train_config.seed)
    device = ray.train.torch.get_device()
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    model = build_classifier(
        Path(loop_config["base_dir"]),
        loop_config["num_labels"],
        pad_token_id=loop_config["pad_token_id"],
        model_config=ModelConfig.model_validate(loop_config["model"]),
    )
    progress = {"epoch": -1, "step": 0, "resumed_from_step": 0}
    checkpoint = ray.train.get_checkpoint()
    optimizer_state = None
    if checkpoint is None and loop_config["initial_state"] is not None:
        fresh = trainable_state_dict(model)
        load_trainable_state(
            model, grow_head(loop_config["initial_state"], fresh, loop_config["known_labels"])
        )
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_trainable_state(model, load_file(Path(folder) / CHECKPOINT_STATE))
            optimizer_state = torch.load(
                Path(folder) / CHECKPOINT_OPTIMIZER, map_location="cpu", weights_only=True
            )
            progress = json.loads((Path(folder) / CHECKPOINT_PROGRESS).read_text())
        progress["resumed_from_step"] = progress["step"]
        log.info("rank %d resumes after epoch %d at step %d", rank, progress["epoch"], progress["step"])
    model = ray.train.torch.prepare_model(model)
    bare_model = getattr(model, "module", model)  # rank-0-only work must bypass DDP collectives
    optimizer = trainer_core.make_optimizer(model, train_config)
    scheduler = trainer_core.make_scheduler(optimizer, loop_config["total_steps"], train_config.warmup_ratio)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])
    weights = trainer_core.class_weights(loop_config["class_counts"], train_config.class_weighting)
    weights = weights.to(device) if weights is not None else None
    tracker = _RankZeroTracker(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    fault = FaultInjection(**loop_config["fault"]) if loop_config["fault"] else None

    collate = PadCollate(loop_config["pad_token_id"], device)

    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")
    accumulate = train_config.grad_accum_steps
    for epoch in range(progress["epoch"] + 1, train_config.epochs):
        model.train()
        losses, started = [], time.monotonic()
        micro_batches = train_shard.iter_torch_batches(
            batch_size=train_config.batch_size,
            collate_fn=collate,
            local_shuffle_buffer_size=4 * train_config.batch_size,
            local_shuffle_seed=train_config.seed + epoch,
        )
        for index, batch in enumerate(micro_batches):
            output = trainer_core.training_step(
                model, batch, weights=weights, loss_scale=1 / accumulate, autocast_dtype=autocast_dtype
            )
            losses.append(output.loss)
            if (index + 1) % accumulate == 0:
                trainer_core.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
                progress["step"] += 1
                _maybe_fail(fault, progress["step"], rank, world_size)
                if rank == 0 and progress["step"] % LOG_EVERY_STEPS == 0:
                    log.info(
                        "epoch %d step %d loss %.4f",
                        epoch,
                        progress["step"],
                        np.mean(losses[-LOG_EVERY_STEPS:]),
                    )
        if len(losses) % accumulate:
            trainer_core.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
            progress["step"] += 1
        progress["epoch"] = epoch
        metrics = {
            "epoch": epoch,
            "step": progress["step"],
            "resumed_from_step": progress["resumed_from_step"],
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "epoch_seconds": time.monotonic() - started,
        }
        if rank == 0:
            metrics.update(
                _validation_metrics(bare_model, validation_shard, collate, weights, autocast_dtype)
            )
            tracker.log(metrics, step=progress["step"])
        _report(metrics, progress, bare_model, optimizer, scheduler, rank)


class PadCollate(NumpyBatchCollateFn):
    """Ray Data batch → padded tensors on the worker's device (dynamic padding per batch)."""

    def __init__(self, pad_token_id: int, device: torch.device) -> None:
        self.pad_token_id = pad_token_id
        self.device = device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = trainer_core.pad_batch(batch["input_ids"], self.pad_token_id)
        tensors["labels"] = torch.tensor(batch["labels"], dtype=torch.long)
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}


def _validation_metrics(
    model: torch.nn.Module,
    shard: ray.data.DataIterator,
    collate: PadCollate,
    weights: torch.Tensor | None,
    autocast_dtype: torch.dtype | None,
) -> dict[str, float]:
    logits, labels = trainer_core.predict_logits(
        model, shard.iter_torch_batches(batch_size=256, collate_fn=collate), autocast_dtype
    )
    if len(labels) == 0:
        return {}
    loss = torch.nn.functional.cross_entropy(
        logits, labels, weight=weights.cpu() if weights is not None else None
    )
    return {"val_loss": float(loss), "val_top1": float((logits.argmax(dim=1) == labels).float().mean())}


def _report(
    metrics: dict[str, float],
    progress: dict[str, int],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> None:
    """Every rank reports (it is a barrier); rank 0 alone attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in trainable_state_dict(model).items()
        }
        save_file(state, Path(folder) / CHECKPOINT_STATE)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            Path(folder) / CHECKPOINT_OPTIMIZER,
        )
        (Path(folder) / CHECKPOINT_PROGRESS).write_text(json.dumps(progress))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _maybe_fail(fault: FaultInjection | None, step: int, rank: int, world_size: int) -> None:
    if fault is None or step != fault.at_step or rank != world_size - 1 or fault.marker.exists():
        return
    # Die only once the last report is registered: a process lost within a second or two of
    # ray.train.report can otherwise restart from the checkpoint before (seen here).
    ray.train.get_all_reported_checkpoints()
    fault.marker.write_text(f"worker rank {rank} killed itself at step {step}\n")
    log.warning("fault injection: rank %d exits at step %d", rank, step)
    os._exit(1)


class _RankZeroTracker:
    """Metrics from rank 0 straight into the driver's MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(key, float(value), now, step) for key, value in metrics.items() if value == value
            ],
        )
