"""The Ray Train worker loop: resumes from the last checkpoint, trains, validates and reports."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from safetensors.torch import load_file, save_file

from pipelines.config import ModelConfig, TrainConfig
from pipelines.model import batching
from pipelines.model import steps as training_steps
from pipelines.model.classifier import build_classifier, grow_head, load_trainable_state, trainable_state_dict

log = logging.getLogger(__name__)

# Every Ray Train worker imports this module to unpickle train_loop: modules that only the
# driver needs (MLflow, scikit-learn: ~1 s of imports per worker here) are imported where used.

CHECKPOINT_STATE = "trainable.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_PROGRESS = "progress.json"
LOG_EVERY_STEPS = 50


@dataclass(frozen=True)
class FaultInjection:
    """Test-only hook: the last worker kills its own process once, at a global step. The marker
    file records that it fired, so the restarted worker group runs on."""

    at_step: int
    marker: Path


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
    optimizer = training_steps.make_optimizer(model, train_config)
    scheduler = training_steps.make_scheduler(
        optimizer, loop_config["total_steps"], train_config.warmup_ratio
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])
    weights = training_steps.class_weights(loop_config["class_counts"], train_config.class_weighting)
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
            output = training_steps.training_step(
                model, batch, weights=weights, loss_scale=1 / accumulate, autocast_dtype=autocast_dtype
            )
            losses.append(output.loss)
            if (index + 1) % accumulate == 0:
                training_steps.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
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
            training_steps.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
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
        tensors = batching.pad_batch(batch["input_ids"], self.pad_token_id)
        tensors["labels"] = torch.tensor(batch["labels"], dtype=torch.long)
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}


def _validation_metrics(
    model: torch.nn.Module,
    shard: ray.data.DataIterator,
    collate: PadCollate,
    weights: torch.Tensor | None,
    autocast_dtype: torch.dtype | None,
) -> dict[str, float]:
    logits, labels = training_steps.predict_logits(
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
