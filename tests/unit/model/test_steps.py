"""Training steps: class weights, schedule, optimizer groups, gradient accumulation."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipelines.config import TrainConfig
from pipelines.model import steps as training_steps


def test_class_weights_favour_rare_tenants() -> None:
    weights = training_steps.class_weights([100, 25, 1], "inverse_sqrt")
    assert weights[2] > weights[1] > weights[0]
    assert float(weights.mean()) == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(2.0)
    assert training_steps.class_weights([3, 1], "none") is None


def test_warmup_then_cosine_to_zero() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = training_steps.make_scheduler(optimizer, total_steps=100, warmup_ratio=0.1)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[55] == pytest.approx(0.5, abs=0.02)
    assert rates[-1] < 0.001
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = training_steps.make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_accumulated_micro_batches_equal_one_big_batch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            return type("Out", (), {"logits": self.inner(input_ids.float())})()

    wrapped = Wrapped()
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    full = {"input_ids": x, "attention_mask": x, "labels": y}
    training_steps.training_step(wrapped, full, weights=None, loss_scale=1.0, autocast_dtype=None)
    expected = model.weight.grad.clone()
    model.zero_grad()
    for part in (slice(0, 2), slice(2, 4)):
        half = {"input_ids": x[part], "attention_mask": x[part], "labels": y[part]}
        training_steps.training_step(wrapped, half, weights=None, loss_scale=0.5, autocast_dtype=None)
    torch.testing.assert_close(model.weight.grad, expected)
