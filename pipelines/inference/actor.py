"""The scoring actor of the rescore pool: row rules, then ``TicketClassifier`` on each batch."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.contract.columns import LABEL_COLUMN, PATH_COLUMN, REJECT_REASON_COLUMN
from pipelines.contract.rows import TICKET_READ_SCHEMA, TIMESTAMP_TYPE, split_valid_rows
from pipelines.inference.output import (
    REJECTED_SCHEMA,
    SCORED_SCHEMA,
    TOP_K_TYPE,
)
from pipelines.model.inference import TicketClassifier

_PREDICTION_FIELDS = [f for f in SCORED_SCHEMA if f.name not in (*TICKET_READ_SCHEMA.names, "current_tenant")]
BATCH_SCHEMA = pa.schema([*REJECTED_SCHEMA, pa.field(PATH_COLUMN, pa.string()), *_PREDICTION_FIELDS])


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
    ) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="oncall-rescore-")  # lives with the actor
        model_dir = Path(self._folder.name) / "classifier"
        for relative, content in model_files.items():
            target = model_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        self.classifier = TicketClassifier.from_dir(model_dir)
        self.classifier.version = model_version
        self.model_name = model_name
        self.top_k = top_k
        self.misroute_confidence = misroute_confidence

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        valid, rejected = split_valid_rows(batch)
        predictions = self.classifier.predict(valid.to_dict("records"), top_k=self.top_k)
        current = valid[LABEL_COLUMN].astype(object).tolist()
        confidence = np.array([p.confidence for p in predictions], dtype=np.float32)
        misrouted = [
            isinstance(tenant, str) and tenant != p.tenant and score > self.misroute_confidence
            for tenant, p, score in zip(current, predictions, confidence, strict=True)
        ]
        frame = pd.concat([valid.assign(**{REJECT_REASON_COLUMN: None}), rejected], ignore_index=True)
        padding = [None] * len(rejected)
        table = pa.Table.from_pandas(
            frame[[*REJECTED_SCHEMA.names, PATH_COLUMN]],
            schema=pa.schema([*REJECTED_SCHEMA, pa.field(PATH_COLUMN, pa.string())]),
            preserve_index=False,
        )
        scored_at = dt.datetime.now(dt.UTC)
        columns = {
            "predicted_tenant": pa.array([p.tenant for p in predictions] + padding, pa.string()),
            "confidence": pa.array([*confidence.tolist(), *padding], pa.float32()),
            "top_k": pa.array(
                [[{"tenant": t, "score": s} for t, s in p.top_k] for p in predictions] + padding, TOP_K_TYPE
            ),
            "abstain": pa.array([p.abstain for p in predictions] + padding, pa.bool_()),
            "misrouted": pa.array(misrouted + padding, pa.bool_()),
            "model_name": pa.array([self.model_name] * len(frame), pa.string()),
            "model_version": pa.array([self.classifier.version] * len(frame), pa.string()),
            "scored_at": pa.array([scored_at] * len(frame), TIMESTAMP_TYPE),
        }
        for name, values in columns.items():
            table = table.append_column(name, values)
        return table.cast(BATCH_SCHEMA)
