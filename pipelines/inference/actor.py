"""The scoring actor of the rescore pool: row rules, then ``TicketClassifier`` on each batch."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.contract.columns import LABEL_COLUMN, PATH_COLUMN, REJECT_REASON_COLUMN
from pipelines.contract.rows import split_valid_rows
from pipelines.inference.schema import BATCH_SCHEMA, REJECTED_SCHEMA
from pipelines.model.inference import CpuRuntime, Prediction, TicketClassifier


class ScoreTickets:
    """Actor of the scoring pool: the row rules, then :meth:`TicketClassifier.predict`.

    The driver downloads the version once and ships its files (JSON, safetensors, tokenizer;
    a large base is referenced by path) so that no actor talks to the registry and actors on
    other nodes need no shared disk."""

    def __init__(
        self,
        model_files: dict[str, bytes],
        model_name: str,
        model_version: str,
        top_k: int,
        misroute_confidence: float,
        cpu_runtime: CpuRuntime,
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="oncall-rescore-")  # lives with the actor
        model_dir = Path(self._folder.name) / "classifier"
        for relative, content in model_files.items():
            target = model_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        self.classifier = TicketClassifier.from_dir(model_dir, cpu_runtime=cpu_runtime)
        self.classifier.version = model_version
        self.model_name = model_name
        self.top_k = top_k
        self.misroute_confidence = misroute_confidence

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        valid, rejected = split_valid_rows(batch)
        predictions = self.classifier.predict(valid.to_dict("records"), top_k=self.top_k)
        frame = pd.concat([valid.assign(**{REJECT_REASON_COLUMN: None}), rejected], ignore_index=True)
        table = pa.Table.from_pandas(
            frame[[*REJECTED_SCHEMA.names, PATH_COLUMN]],
            schema=pa.schema([*REJECTED_SCHEMA, pa.field(PATH_COLUMN, pa.string())]),
            preserve_index=False,
        )
        columns = self._prediction_columns(predictions, valid[LABEL_COLUMN].astype(object).tolist())
        padding = [None] * len(rejected)
        scored_at = dt.datetime.now(dt.UTC)
        for name, values in columns.items():
            table = table.append_column(name, pa.array(values + padding, _column_type(name)))
        for name, value in (
            ("model_name", self.model_name),
            ("model_version", self.classifier.version),
            ("scored_at", scored_at),
        ):
            table = table.append_column(name, pa.array([value] * len(frame), _column_type(name)))
        return table.cast(BATCH_SCHEMA)

    def _prediction_columns(
        self, predictions: list[Prediction], current: list[object]
    ) -> dict[str, list[Any]]:
        """The scored rows' prediction columns (rejected rows get nulls), from the one
        serialized form of a prediction."""
        records = [p.as_record() for p in predictions]
        confidence = np.array([r["confidence"] for r in records], dtype=np.float32)
        misrouted = [
            isinstance(tenant, str) and tenant != r["tenant"] and score > self.misroute_confidence
            for tenant, r, score in zip(current, records, confidence, strict=True)
        ]
        return {
            "predicted_tenant": [r["tenant"] for r in records],
            "confidence": confidence.tolist(),
            "top_k": [r["top_k"] for r in records],
            "abstain": [r["abstain"] for r in records],
            "misrouted": misrouted,
        }


def _column_type(name: str) -> pa.DataType:
    return BATCH_SCHEMA.field(name).type
