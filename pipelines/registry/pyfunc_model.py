"""MLflow models-from-code entry point: a registered version as a standard pyfunc.

``mlflow.pyfunc.load_model("models:/oncall-router@champion").predict(frame)`` and
``mlflow models serve -m models:/oncall-router@champion`` load this file, which wraps
:class:`TicketClassifier`; no pickled object is involved. Not imported by the package itself
(MLflow executes it on load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel, PythonModelContext

OUTPUT_COLUMNS = ("tenant", "confidence", "top_k", "abstain")


def untitled_rows(frame: pd.DataFrame) -> list[int]:
    """Positions of rows without a title, the ticket's one required text (a row with no text at
    all cannot be scored)."""
    if "title" not in frame.columns:
        return list(range(len(frame)))
    return [i for i, title in enumerate(frame["title"]) if pd.isna(title) or not str(title).strip()]


class TicketClassifierPyfunc(PythonModel):
    """Rows with ticket columns in, ranked tenants out (same answers as TicketClassifier).

    A registered version carries its own copy of this file and of ``pipelines`` (``code/``, used
    where ``pipelines`` is not imported yet, e.g. under ``mlflow models serve``); in a process
    that has already imported ``pipelines`` (Serve replicas, rescore), that one is used. So this
    file may rely only on ``pipelines.predict.TicketClassifier``'s ``from_dir`` and ``predict``
    (and on the prediction's ``as_record``)."""

    def load_context(self, context: PythonModelContext) -> None:
        from pipelines.predict import TicketClassifier

        self.classifier = TicketClassifier.from_dir(Path(context.artifacts["classifier"]))

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        # The signature fills in the default top_k; without one, TicketClassifier's applies.
        options = {"top_k": int(params["top_k"])} if params and "top_k" in params else {}
        if options and options["top_k"] < 1:
            raise MlflowException.invalid_parameter_value(f"top_k must be at least 1, got {options['top_k']}")
        untitled = untitled_rows(model_input)
        if untitled:
            raise MlflowException.invalid_parameter_value(
                f"ticket row(s) {untitled[:10]} have no title (the one required ticket text)"
            )
        predictions = self.classifier.predict(model_input.to_dict("records"), **options)
        records = [p.as_record() for p in predictions]
        for record in records:
            record["top_k"] = json.dumps(record["top_k"])  # one column of plain strings
        return pd.DataFrame(records, columns=list(OUTPUT_COLUMNS))


mlflow.models.set_model(TicketClassifierPyfunc())
