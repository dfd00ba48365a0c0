"""``inference.cpu_runtime``: int8 gives the same answers as fp32 eager within a stated tolerance.

A tiny classifier is trained for a few dozen steps in plain PyTorch (no Ray) on the small
archive, until its answers are decisive (an untrained or random-feature model answers with
near-ties that any rounding flips), then both runtimes score a fixed set of held-out tickets.
The test top-1 of a fully trained classifier (int8 within 0.5 point of fp32) is measured by
``python -m benchmarks.cpu_runtime`` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.config import InferenceConfig, ModelConfig, TrainConfig
from pipelines.contract.archive import Archive
from pipelines.contract.columns import LABEL_COLUMN
from pipelines.contract.text import TextBuilder
from pipelines.errors import ModelError
from pipelines.model.artifact import LabelSet, save_classifier
from pipelines.model.base import load_tokenizer
from pipelines.model.batching import pad_batch
from pipelines.model.classifier import build_classifier
from pipelines.model.inference import (
    CPU_RUNTIMES,
    INT8_MIN_HIDDEN_SIZE,
    TicketClassifier,
    resolve_cpu_runtime,
)
from pipelines.model.steps import make_optimizer, optimizer_step, training_step

MAX_LENGTH = 48
TRAIN_STEPS, TRAIN_BATCH, LEARNING_RATE = 60, 32, 3e-3
HELD_OUT = 200  # the fixed set of tickets both runtimes score: the newest of the archive
MIN_TOP1_AGREEMENT = 0.98  # measured 0.99: 2 of 200 flips, both near-ties of fp32
MAX_PROBABILITY_DIFFERENCE = 0.08  # measured 0.048 (AVX2, 2026-12-06)


def archive_rows(archive: Path) -> pd.DataFrame:
    """Labelled tickets of the archive, oldest day first (a fixed order)."""
    files = [file for partition in Archive(str(archive)).partitions() for file in partition.files]
    rows = pd.concat([pd.read_parquet(file) for file in files], ignore_index=True)
    return rows[rows[LABEL_COLUMN].notna()].reset_index(drop=True)


@pytest.fixture(scope="module")
def classifier_dir(
    tmp_path_factory: pytest.TempPathFactory,
    small_archive: tuple[Path, dict],
    tiny_base: Path,
    text_builder: TextBuilder,
) -> tuple[Path, list[dict]]:
    """The briefly trained classifier, saved, and the held-out tickets."""
    rows = archive_rows(small_archive[0])
    train, held_out = rows.iloc[:-HELD_OUT], rows.iloc[-HELD_OUT:]
    labels = LabelSet.from_tenants(rows[LABEL_COLUMN])
    tokenizer = load_tokenizer(tiny_base, max_length=MAX_LENGTH)
    torch.manual_seed(0)
    model = build_classifier(
        tiny_base, len(labels), pad_token_id=tokenizer.pad_token_id, model_config=ModelConfig()
    )
    _train(model, tokenizer, text_builder, train, labels)
    out = save_classifier(
        model.eval(),
        tokenizer,
        labels,
        tmp_path_factory.mktemp("cpu-runtime") / "classifier",
        base_dir=tiny_base,
        text=text_builder.settings(),
        max_length=MAX_LENGTH,
    )
    return out, held_out.astype(object).where(held_out.notna(), None).to_dict("records")


def _train(
    model: torch.nn.Module, tokenizer: Any, builder: TextBuilder, rows: pd.DataFrame, labels: LabelSet
) -> None:
    """``TRAIN_STEPS`` steps of the product's training step at a constant learning rate."""
    optimizer = make_optimizer(model, TrainConfig(lr=LEARNING_RATE))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    sample = rows.sample(TRAIN_STEPS * TRAIN_BATCH, replace=True, random_state=0)
    ids = tokenizer(builder.build_many(sample.to_dict("records")), truncation=True, max_length=MAX_LENGTH)
    targets = sample[LABEL_COLUMN].map(labels.id_of()).to_numpy()
    model.train()
    for start in range(0, len(sample), TRAIN_BATCH):
        batch = pad_batch(ids["input_ids"][start : start + TRAIN_BATCH], tokenizer.pad_token_id)
        batch["labels"] = torch.tensor(targets[start : start + TRAIN_BATCH])
        training_step(model, batch, weights=None, loss_scale=1.0, autocast_dtype=None)
        optimizer_step(model, optimizer, scheduler, max_grad_norm=1.0)


def probabilities(classifier: TicketClassifier, tickets: list[dict]) -> np.ndarray:
    return classifier.predict_proba_texts(classifier.text_builder.build_many(tickets))


def test_int8_answers_match_fp32_eager_on_a_fixed_set_of_tickets(
    classifier_dir: tuple[Path, list[dict]],
) -> None:
    model_dir, tickets = classifier_dir
    eager = TicketClassifier.from_dir(model_dir, device="cpu", cpu_runtime="eager")
    int8 = TicketClassifier.from_dir(model_dir, device="cpu", cpu_runtime="int8")
    expected, got = probabilities(eager, tickets), probabilities(int8, tickets)

    assert expected.max(axis=1).mean() > 0.5  # decisive answers, not a random model's near-ties
    agreement = float((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
    assert agreement >= MIN_TOP1_AGREEMENT, agreement
    assert np.abs(got - expected).max() <= MAX_PROBABILITY_DIFFERENCE


def test_int8_scores_each_ticket_alone_so_neighbours_never_move_its_answer(
    classifier_dir: tuple[Path, list[dict]],
) -> None:
    model_dir, tickets = classifier_dir
    int8 = TicketClassifier.from_dir(model_dir, device="cpu", batch_size=32, cpu_runtime="int8")
    assert int8.batch_size == 1
    decoder_layer = int8.model.get_decoder().layers[0]
    assert type(decoder_layer.mlp.up_proj).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(int8.model.score) is torch.nn.Linear  # the head stays fp32

    together = probabilities(int8, tickets[:16])
    alone = np.concatenate([probabilities(int8, [ticket]) for ticket in tickets[:16]])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_auto_is_int8_from_the_measured_width_on_and_eager_below() -> None:
    assert resolve_cpu_runtime("auto", INT8_MIN_HIDDEN_SIZE) == "int8"
    assert resolve_cpu_runtime("auto", INT8_MIN_HIDDEN_SIZE - 1) == "eager"
    assert resolve_cpu_runtime("eager", 4096) == "eager"
    assert resolve_cpu_runtime("int8", 16) == "int8"
    with pytest.raises(ModelError, match="unknown CPU runtime"):
        resolve_cpu_runtime("onnx", 512)  # type: ignore[arg-type]


def test_int8_needs_the_merged_model(classifier_dir: tuple[Path, list[dict]]) -> None:
    with pytest.raises(ModelError, match="merged model"):
        TicketClassifier.from_dir(classifier_dir[0], device="cpu", merge=False, cpu_runtime="int8")


def test_the_config_offers_exactly_the_runtimes_the_classifier_knows() -> None:
    annotation = InferenceConfig.model_fields["cpu_runtime"].annotation
    assert get_args(annotation) == CPU_RUNTIMES
    assert InferenceConfig().cpu_runtime == "auto"
