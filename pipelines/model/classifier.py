"""The sequence classifier on a base: building it, LoRA wrapping (head ``score`` trained fully),
its trainable state, and growing the head for new tenants."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import (
    AutoConfig,
    Qwen3ForSequenceClassification,
)
from transformers.utils import logging as hf_logging

from pipelines.errors import ModelError
from pipelines.model.base import _check_base_dir

if TYPE_CHECKING:
    from pipelines.config import ModelConfig
HEAD_NAME = "score"  # the classification head of Qwen3ForSequenceClassification


def load_base_classifier(
    base_dir: Path,
    num_labels: int,
    *,
    pad_token_id: int,
    dtype: torch.dtype = torch.float32,
) -> Qwen3ForSequenceClassification:
    """A sequence classifier on a local Qwen3 base; the ``score`` head starts from random init."""
    _check_base_dir(base_dir)
    if num_labels < 1:
        raise ModelError(f"num_labels must be >= 1, got {num_labels}")
    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    config.num_labels = num_labels
    config.pad_token_id = pad_token_id
    # The load report would call the new head "MISSING" on every load; it is expected here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return Qwen3ForSequenceClassification.from_pretrained(
            base_dir, config=config, dtype=dtype, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def build_classifier(
    base_dir: Path, num_labels: int, *, pad_token_id: int, model_config: ModelConfig
) -> torch.nn.Module:
    """The trainable classifier: LoRA on the configured projections with the ``score`` head
    trained fully, or (``finetune: full``) every weight trainable. One code path for both."""
    model = load_base_classifier(base_dir, num_labels, pad_token_id=pad_token_id)
    return wrap_for_finetune(model, model_config)


def wrap_for_finetune(model: Qwen3ForSequenceClassification, model_config: ModelConfig) -> torch.nn.Module:
    """``model`` as :func:`build_classifier` trains it: wrapped in LoRA (``score`` head fully
    trained) or, for ``finetune: full``, unchanged. Reads ``finetune`` and ``lora`` only, so the
    GPU benchmark calls it on a random-init model without a base directory."""
    if model_config.finetune == "full":
        return model
    lora = model_config.lora
    peft_config = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=[HEAD_NAME],
    )
    return get_peft_model(model, peft_config)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the adapter and head (LoRA) or every weight (full)."""
    if isinstance(model, PeftModel):
        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise ModelError(f"checkpoint holds unexpected weights: {result.unexpected_keys[:5]}")
    else:
        model.load_state_dict(state)


def grow_head(
    previous: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], known_labels: int
) -> dict[str, torch.Tensor]:
    """``previous`` reshaped onto a model whose head has more classes (``fresh``, its newly
    initialised state): the head's rows of the ``known_labels`` old tenants are copied, the rows
    of new tenants keep their fresh initialisation; every other weight must match exactly."""
    grown = {}
    for name, tensor in previous.items():
        if name not in fresh:
            raise ModelError(f"warm start: weight {name} does not exist in the new model")
        target = fresh[name]
        if tensor.shape == target.shape:
            grown[name] = tensor
        elif (
            HEAD_NAME in name.split(".")
            and tensor.shape[1:] == target.shape[1:]
            and (tensor.shape[0] == known_labels <= target.shape[0])
        ):
            rows = target.detach().clone()
            rows[:known_labels] = tensor
            grown[name] = rows
        else:
            raise ModelError(
                f"warm start: weight {name} has shape {tuple(tensor.shape)}, the new model "
                f"{tuple(target.shape)} (another base or LoRA shape?)"
            )
    return grown
