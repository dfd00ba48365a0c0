"""Tokenizing prepared rows in a Ray Data actor pool into the training and validation splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import ray.data

from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN, REJECT_REASON_COLUMN, TEXT_COLUMN
from pipelines.data.window import TimeSplit
from pipelines.model.artifact import LabelSet


class Tokenize:
    """Tokenizes labelled rows of known tenants; built once per actor (the tokenizer load is
    the expensive part). No padding here: batches are padded to their own longest row."""

    def __init__(self, tokenizer_dir: Path, max_length: int, labels: tuple[str, ...]) -> None:
        from pipelines.model.base import load_tokenizer  # transformers only where tokenizing runs

        self.tokenizer = load_tokenizer(tokenizer_dir, max_length=max_length)
        self.max_length = max_length
        self.label_ids = {tenant: index for index, tenant in enumerate(labels)}

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        label_ids = batch[LABEL_COLUMN].map(self.label_ids)
        keep = batch[REJECT_REASON_COLUMN].isna() & label_ids.notna()
        texts = batch.loc[keep, TEXT_COLUMN].tolist()
        encoded = (
            self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"] if texts else []
        )
        input_ids = np.empty(len(encoded), dtype=object)
        input_ids[:] = [np.asarray(ids, dtype=np.int32) for ids in encoded]
        return {
            "input_ids": input_ids,
            "labels": label_ids[keep].to_numpy(dtype=np.int64),
            DAY_COLUMN: batch.loc[keep, DAY_COLUMN].to_numpy(),
        }


def tokenized_splits(
    prepared: ray.data.Dataset,
    split: TimeSplit,
    labels: LabelSet,
    tokenizer_dir: Path,
    max_length: int,
    cpus_per_actor: float = 0.5,
) -> dict[str, ray.data.Dataset]:
    """Train/validation/test datasets of (input_ids, labels), tokenized in one actor pass."""
    tokenized = prepared.map_batches(
        Tokenize,
        fn_constructor_kwargs={
            "tokenizer_dir": tokenizer_dir,
            "max_length": max_length,
            "labels": labels.tenants,
        },
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=cpus_per_actor,
    ).materialize()
    return {
        name: tokenized.filter(lambda row, days=days: row[DAY_COLUMN] in days).drop_columns([DAY_COLUMN])
        for name, days in (("train", split.train), ("validation", split.validation), ("test", split.test))
    }
