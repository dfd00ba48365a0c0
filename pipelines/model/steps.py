"""The training step and its helpers, in plain PyTorch: no Ray, no MLflow.

Ray Train's loop (``pipelines.training.loop``) calls these, and so can a bare GPU machine or a
benchmark. Batches are dicts of tensors: ``input_ids``, ``attention_mask``, ``labels``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F  # noqa: N812

if TYPE_CHECKING:
    from pipelines.config import TrainConfig


def class_weights(counts: Sequence[int], scheme: str) -> torch.Tensor | None:
    """Loss weights against class imbalance, normalised to mean 1 over classes seen."""
    if scheme == "none":
        return None
    freq = torch.as_tensor(counts, dtype=torch.float32).clamp(min=1)
    weights = freq.rsqrt() if scheme == "inverse_sqrt" else freq.reciprocal()
    return weights * (len(weights) / weights.sum())


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW on trainable parameters; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to zero over ``total_steps`` optimizer steps."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class StepOutput:
    loss: float  # of the micro-batch, before ``loss_scale``


def training_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    weights: torch.Tensor | None,
    loss_scale: float,
    autocast_dtype: torch.dtype | None,
) -> StepOutput:
    """Forward and backward of one micro-batch (gradients accumulate; the caller steps)."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(
        device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits.float(), batch["labels"], weight=weights)
    (loss * loss_scale).backward()
    return StepOutput(loss=float(loss.detach()))


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
) -> None:
    """Clip, step, schedule, zero."""
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], autocast_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, in order (model in eval mode for the duration)."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for batch in batches:
        device_type = batch["input_ids"].device.type
        with torch.autocast(
            device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        all_logits.append(logits.float().cpu())
        all_labels.append(batch["labels"].cpu())
    model.train(was_training)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)
