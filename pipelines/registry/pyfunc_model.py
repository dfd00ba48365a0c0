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


class TicketRouterModel(PythonModel):
    """Rows with ticket columns in, ranked tenants out (same answers as TicketClassifier)."""

    def load_context(self, context: PythonModelContext) -> None:
        from pipelines.model.inference import TicketClassifier

        self.classifier = TicketClassifier.from_dir(Path(context.artifacts["classifier"]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", 3))
        predictions = self.classifier.predict(model_input.to_dict("records"), top_k=top_k)
        return pd.DataFrame(
            {
                "tenant": [p.tenant for p in predictions],
                "confidence": [p.confidence for p in predictions],
                "top_k": [json.dumps([{"tenant": t, "score": s} for t, s in p.top_k]) for p in predictions],
                "abstain": [p.abstain for p in predictions],
            }
        )


mlflow.models.set_model(TicketRouterModel())
