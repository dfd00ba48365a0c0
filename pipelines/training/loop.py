"""The Ray Train worker loop: resumes from the last checkpoint, trains, validates and reports.

Every rank reports each epoch (a report is a barrier); rank 0 alone validates, logs the epoch's
metrics into the driver's MLflow run and attaches the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from safetensors.torch import load_file, save_file

from pipelines.config import ModelConfig, TrainConfig
from pipelines.faults import Fault, Faults
from pipelines.model import batching
from pipelines.model import steps as training_steps
from pipelines.model.classifier import build_classifier, grow_head, load_trainable_state, trainable_state_dict
from pipelines.model.head_init import init_new_tenant_rows

# Every Ray Train worker imports this module to unpickle train_loop: modules that only the
# driver or rank 0 needs (MLflow, scikit-learn: ~1 s of imports per worker here) are imported
# where used.
if TYPE_CHECKING:
    from pipelines.registry.tracking import RunLog

log = logging.getLogger(__name__)

CHECKPOINT_STATE = "trainable.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_PROGRESS = "progress.json"
LOG_EVERY_STEPS = 50
VALIDATION_BATCH = 256
WORKER_EXIT = "train.worker_exit"  # the fault point of this loop (pipelines.faults)


@dataclass(frozen=True)
class LoopConfig:
    """What :func:`train_loop` gets on every worker (plain values: it is pickled to them)."""

    base_dir: Path  # absolute: workers do not run in the driver's directory
    num_labels: int
    pad_token_id: int
    model: ModelConfig
    train: TrainConfig
    class_counts: tuple[int, ...]  # training tickets per label id
    total_steps: int  # optimizer steps over all epochs (the schedule's length)
    tracking_uri: str
    run_id: str  # the driver's MLflow run; rank 0 logs into it
    faults: Faults = field(default_factory=Faults)
    # Warm start: the previous classifier's trainable state, whose head knew `known_labels`.
    initial_state: dict[str, torch.Tensor] | None = None
    known_labels: int = 0


@dataclass
class Progress:
    """Where training stands; saved with each checkpoint (the driver reads it as a dict)."""

    epoch: int = -1  # the last finished epoch
    step: int = 0  # optimizer steps so far
    resumed_from_step: int = 0


@dataclass
class _Training:
    """One worker's training state (built by :func:`_start`)."""

    model: torch.nn.Module  # DDP-wrapped when there are several workers
    bare_model: torch.nn.Module  # rank-0-only work must bypass DDP collectives
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    weights: torch.Tensor | None
    collate: PadCollate
    autocast_dtype: torch.dtype | None
    progress: Progress


def train_loop(config: LoopConfig) -> None:
    """Runs on every Ray Train worker. Resumes from the last checkpoint after a failure."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    exit_fault = _worker_exit_fault(config.faults, rank, context.get_world_size())
    # Model and optimizer: resumed, warm-started or fresh
    torch.manual_seed(config.train.seed)
    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")
    training = _start(config, rank, train_shard)
    run = _rank_zero_run(config) if rank == 0 else None
    # Training
    for epoch in range(training.progress.epoch + 1, config.train.epochs):
        metrics = _train_epoch(config.train, training, train_shard, epoch, rank, exit_fault)
        if run is not None:
            metrics.update(_validation_metrics(training, validation_shard))
            run.metrics(metrics, step=training.progress.step)
        # Checkpoint
        _report(metrics, training, rank)


def _start(config: LoopConfig, rank: int, train_shard: ray.data.DataIterator) -> _Training:
    """The model (from the last checkpoint, else the warm start, else fresh), its optimizer
    and schedule (restored with a checkpoint), the class weights and the collate function. A
    warm start grows the head; new tenants' rows start from their tickets (``mean``)."""
    device = ray.train.torch.get_device()
    collate = PadCollate(config.pad_token_id, device)
    model = build_classifier(
        config.base_dir, config.num_labels, pad_token_id=config.pad_token_id, model_config=config.model
    )
    progress, optimizer_state = Progress(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_trainable_state(model, load_file(Path(folder) / CHECKPOINT_STATE))
            optimizer_state = torch.load(
                Path(folder) / CHECKPOINT_OPTIMIZER, map_location="cpu", weights_only=True
            )
            progress = Progress(**json.loads((Path(folder) / CHECKPOINT_PROGRESS).read_text()))
        progress.resumed_from_step = progress.step
        log.info("rank %d resumes after epoch %d at step %d", rank, progress.epoch, progress.step)
    elif config.initial_state is not None:
        grown = grow_head(config.initial_state, trainable_state_dict(model), config.known_labels)
        load_trainable_state(model, grown)
        if config.train.new_tenant_init == "mean" and config.num_labels > config.known_labels:
            model.to(device)
            batches = train_shard.iter_torch_batches(batch_size=VALIDATION_BATCH, collate_fn=collate)
            init_new_tenant_rows(model, batches, config.known_labels)  # one pass, every rank
    model = ray.train.torch.prepare_model(model)
    optimizer = training_steps.make_optimizer(model, config.train)
    scheduler = training_steps.make_scheduler(optimizer, config.total_steps, config.train.warmup_ratio)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])
    weights = training_steps.class_weights(config.class_counts, config.train.class_weighting)
    return _Training(
        model=model,
        bare_model=getattr(model, "module", model),
        optimizer=optimizer,
        scheduler=scheduler,
        weights=weights.to(device) if weights is not None else None,
        collate=collate,
        autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
        progress=progress,
    )


def _rank_zero_run(config: LoopConfig) -> RunLog:
    """The driver's MLflow run, written from rank 0 (Train v2 has no MLflow callback)."""
    from pipelines.registry.tracking import RunLog  # MLflow: on rank 0 only

    return RunLog.attach(config.tracking_uri, config.run_id)


def _train_epoch(
    train_config: TrainConfig,
    training: _Training,
    shard: ray.data.DataIterator,
    epoch: int,
    rank: int,
    exit_fault: Fault | None,
) -> dict[str, float]:
    """One pass over this worker's shard (gradients accumulated over ``grad_accum_steps``
    micro-batches); returns the epoch's metrics."""
    training.model.train()
    accumulate = train_config.grad_accum_steps
    losses, started = [], time.monotonic()
    micro_batches = shard.iter_torch_batches(
        batch_size=train_config.batch_size,
        collate_fn=training.collate,
        local_shuffle_buffer_size=4 * train_config.batch_size,
        local_shuffle_seed=train_config.seed + epoch,
    )
    for index, batch in enumerate(micro_batches):
        output = training_steps.training_step(
            training.model,
            batch,
            weights=training.weights,
            loss_scale=1 / accumulate,
            autocast_dtype=training.autocast_dtype,
        )
        losses.append(output.loss)
        if (index + 1) % accumulate == 0:
            _optimizer_step(training, train_config)
            _maybe_exit(exit_fault, training.progress.step, rank)
            if rank == 0 and training.progress.step % LOG_EVERY_STEPS == 0:
                recent = np.mean(losses[-LOG_EVERY_STEPS:])
                log.info("epoch %d step %d loss %.4f", epoch, training.progress.step, recent)
    if len(losses) % accumulate:  # the epoch's last, partial accumulation
        _optimizer_step(training, train_config)
    training.progress.epoch = epoch
    return {
        "epoch": epoch,
        "step": training.progress.step,
        "resumed_from_step": training.progress.resumed_from_step,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "epoch_seconds": time.monotonic() - started,
    }


def _optimizer_step(training: _Training, train_config: TrainConfig) -> None:
    training_steps.optimizer_step(
        training.model, training.optimizer, training.scheduler, train_config.max_grad_norm
    )
    training.progress.step += 1


class PadCollate(NumpyBatchCollateFn):
    """Ray Data batch → padded tensors on the worker's device (dynamic padding per batch)."""

    def __init__(self, pad_token_id: int, device: torch.device) -> None:
        self.pad_token_id = pad_token_id
        self.device = device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = batching.pad_batch(batch["input_ids"], self.pad_token_id)
        tensors["labels"] = torch.tensor(batch["labels"], dtype=torch.long)
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}


def _validation_metrics(training: _Training, shard: ray.data.DataIterator) -> dict[str, float]:
    """Loss and top-1 on the whole validation split (rank 0, unwrapped model: a DDP forward
    is a collective)."""
    logits, labels = training_steps.predict_logits(
        training.bare_model,
        shard.iter_torch_batches(batch_size=VALIDATION_BATCH, collate_fn=training.collate),
        training.autocast_dtype,
    )
    if len(labels) == 0:
        return {}
    weights = training.weights.cpu() if training.weights is not None else None
    loss = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    return {"val_loss": float(loss), "val_top1": float((logits.argmax(dim=1) == labels).float().mean())}


def _report(metrics: dict[str, float], training: _Training, rank: int) -> None:
    """Every rank reports (it is a barrier); rank 0 alone attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in trainable_state_dict(training.bare_model).items()
        }
        save_file(state, Path(folder) / CHECKPOINT_STATE)
        torch.save(
            {"optimizer": training.optimizer.state_dict(), "scheduler": training.scheduler.state_dict()},
            Path(folder) / CHECKPOINT_OPTIMIZER,
        )
        (Path(folder) / CHECKPOINT_PROGRESS).write_text(json.dumps(asdict(training.progress)))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _worker_exit_fault(faults: Faults, rank: int, world_size: int) -> Fault | None:
    """The ``train.worker_exit`` fault if this worker is the one to fire it (the last rank)."""
    fault = faults.planned_at(WORKER_EXIT)
    if fault is None or rank != world_size - 1:
        return None
    if fault.at_step is None or fault.marker is None:
        raise ValueError(f"fault {WORKER_EXIT} needs at_step and marker")
    return fault


def _maybe_exit(fault: Fault | None, step: int, rank: int) -> None:
    if fault is None or step != fault.at_step or fault.marker is None or fault.marker.exists():
        return
    # Die only once the last report is registered: a process lost within a second or two of
    # ray.train.report can otherwise restart from the checkpoint before (seen here).
    ray.train.get_all_reported_checkpoints()
    fault.marker.write_text(f"worker rank {rank} killed itself at step {step}\n")
    log.warning("fault injection: rank %d exits at step %d", rank, step)
    os._exit(1)
