"""Informed head rows for tenants new to a warm-started classifier.

A grown head gives a new tenant a random row: its logit is noise until training has moved it,
and with ~10 tickets it barely moves in a nightly. Instead the row starts as the direction of
the tenant's own tickets in the current model's pooled representation (the hidden state the
head reads: the last non-pad token), centred on the mean over every ticket seen (so the
direction that all tickets share does not win it every ticket), scaled to the mean norm of the
known tenants' rows, and shifted along that mean so that it gives the average ticket what the
known rows give it on average: its logits are on the scale of theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from pipelines.errors import ModelError
from pipelines.model.classifier import HEAD_NAME, load_trainable_state, trainable_state_dict

log = logging.getLogger(__name__)

# Tickets of known tenants forwarded for the centring mean (new tenants' tickets all are).
CENTRING_TICKETS = 256


class FeatureSums:
    """Per-label sums of pooled features and counts, plus the sum over every ticket seen."""

    def __init__(self, num_labels: int, hidden: int) -> None:
        self.by_label = torch.zeros(num_labels, hidden, dtype=torch.float64)
        self.counts = torch.zeros(num_labels, dtype=torch.float64)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.by_label.index_add_(0, labels.cpu(), features.double().cpu())
        self.counts.index_add_(0, labels.cpu(), torch.ones(len(labels), dtype=torch.float64))

    def all_reduce(self) -> None:
        """Sums over every Ray Train worker's shard (each saw its own), so all ranks agree."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.by_label)
            torch.distributed.all_reduce(self.counts)


def init_new_tenant_rows(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], known_labels: int
) -> list[int]:
    """Sets the head rows of label ids ``>= known_labels`` that have tickets in ``batches`` (dicts
    of ``input_ids``, ``attention_mask``, ``labels``); returns the ids set. Rows of new tenants
    without a ticket keep their random init."""
    state = trainable_state_dict(model)
    head_key = _head_weight_key(state)
    head = state[head_key]
    sums = _pooled_feature_sums(model, batches, known_labels, head.shape)
    sums.all_reduce()
    seen = sums.counts > 0
    new_ids = [label for label in range(known_labels, head.shape[0]) if seen[label]]
    if not new_ids or known_labels == 0:
        return []
    centre = sums.by_label[seen].sum(0) / sums.counts[seen].sum()
    known = head[:known_labels].double()
    scale = known.norm(dim=1).mean()
    shared = (known @ centre).mean()  # what the known rows give the average ticket
    rows = head.detach().clone()
    for label in new_ids:
        direction = sums.by_label[label] / sums.counts[label] - centre
        row = direction / direction.norm().clamp_min(1e-12) * scale
        row += (shared - row @ centre) / (centre @ centre).clamp_min(1e-12) * centre
        rows[label] = row.to(rows.dtype)
    load_trainable_state(model, {**state, head_key: rows})
    log.info(
        "head rows of %d new tenant(s) set from %d of their tickets",
        len(new_ids),
        int(sums.counts[new_ids].sum()),
    )
    return new_ids


def _head_weight_key(state: dict[str, torch.Tensor]) -> str:
    keys = [key for key in state if HEAD_NAME in key.split(".") and key.endswith("weight")]
    if len(keys) != 1:
        raise ModelError(f"expected one '{HEAD_NAME}' weight among the trainable weights, found {keys}")
    return keys[0]


def _pooled_feature_sums(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    known_labels: int,
    head_shape: torch.Size,
) -> FeatureSums:
    """Forward of the new tenants' tickets and up to :data:`CENTRING_TICKETS` others; the head's
    input at each ticket's last token, summed per label."""
    captured: list[torch.Tensor] = []
    hook = _outermost_head(model).register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
    sums = FeatureSums(head_shape[0], head_shape[1])
    others = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                labels = batch["labels"]
                keep = labels >= known_labels
                room = CENTRING_TICKETS - others
                if room > 0:
                    keep |= (labels < known_labels) & (
                        torch.cumsum((labels < known_labels).long(), 0) <= room
                    )
                if not keep.any():
                    continue
                others += int(((labels < known_labels) & keep).sum())
                captured.clear()
                mask = batch["attention_mask"][keep]
                model(input_ids=batch["input_ids"][keep], attention_mask=mask)
                last = mask.sum(dim=1) - 1  # right padding (pipelines.model.batching)
                sums.add(captured[0][torch.arange(len(last)), last], labels[keep])
    finally:
        hook.remove()
        model.train(was_training)
    return sums


def _outermost_head(model: torch.nn.Module) -> torch.nn.Module:
    """The head module (peft's wrapper around it when LoRA wraps the model)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == HEAD_NAME:
            return module
    raise ModelError(f"the model has no '{HEAD_NAME}' head")
