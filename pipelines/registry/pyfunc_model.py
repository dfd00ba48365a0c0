"""MLflow models-from-code entry point: a registered version as a standard pyfunc.

``mlflow.pyfunc.load_model("models:/oncall-router@champion").predict(frame)`` loads this file,
which wraps :class:`TicketClassifier`; no pickled object is involved. Not imported by the
package itself (MLflow executes it on load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

OUTPUT_COLUMNS = ("tenant", "confidence", "top_k", "abstain")


class TicketClassifierPyfunc(PythonModel):
    """Rows with ticket columns in, ranked tenants out (same answers as TicketClassifier).

    A registered version carries its own copy of this file: it may rely only on
    ``pipelines.predict.TicketClassifier``'s ``from_dir`` and ``predict`` (and on the prediction's
    ``as_record``)."""

    def load_context(self, context: PythonModelContext) -> None:
        from pipelines.predict import TicketClassifier

        self.classifier = TicketClassifier.from_dir(Path(context.artifacts["classifier"]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", 3))
        predictions = self.classifier.predict(model_input.to_dict("records"), top_k=top_k)
        records = [p.as_record() for p in predictions]
        for record in records:
            record["top_k"] = json.dumps(record["top_k"])  # one column of plain strings
        return pd.DataFrame(records, columns=list(OUTPUT_COLUMNS))


mlflow.models.set_model(TicketClassifierPyfunc())
