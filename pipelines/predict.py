"""Stable public path of the inference class: registered versions' pyfunc code imports
``pipelines.predict.TicketClassifier``, so this module stays where it was before the layout."""

from pipelines.model.inference import Prediction, TicketClassifier

__all__ = ["Prediction", "TicketClassifier"]
