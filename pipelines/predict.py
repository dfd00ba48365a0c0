"""``TicketClassifier``: the one inference class. Serving, rescoring and evaluation wrap it.

Its forward path imports neither Ray nor MLflow, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipelines.config import OncallConfig
from pipelines.labels import LabelSet
from pipelines.model import load_classifier
from pipelines.schema import TextBuilder

if TYPE_CHECKING:
    from pipelines.registry import Registry, VersionRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    tenant: str
    confidence: float
    top_k: list[tuple[str, float]]
    abstain: bool  # below the version's threshold: route to human triage


class TicketClassifier:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        labels: LabelSet,
        text_builder: TextBuilder,
        *,
        max_length: int,
        abstain_threshold: float = 0.0,
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.text_builder = text_builder
        self.max_length = max_length
        self.abstain_threshold = abstain_threshold
        self.batch_size = batch_size
        self.version: str | None = None  # the registry version, when loaded from the registry
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_dir(
        cls, model_dir: Path, *, device: str | None = None, base_dir: Path | None = None, batch_size: int = 64
    ) -> TicketClassifier:
        """Load a saved classifier directory (LoRA merged; bf16 on GPU, fp32 on CPU)."""
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        model, tokenizer, labels, descriptor = load_classifier(model_dir, base_dir=base_dir, dtype=dtype)
        return cls(
            model.to(target),
            tokenizer,
            labels,
            TextBuilder.from_settings(descriptor["text"]),
            max_length=descriptor["max_length"],
            abstain_threshold=float(descriptor.get("abstain_threshold", 0.0)),
            batch_size=batch_size,
        )

    @classmethod
    def from_registry(
        cls,
        config: OncallConfig,
        *,
        alias: str | None = None,
        version: str | None = None,
        name: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
    ) -> TicketClassifier:
        """A registered version (``models:/<name>@alias`` or version number; ``name`` defaults to
        ``registry.model_name``).
        MLflow is imported here only: the forward path needs neither MLflow nor Ray."""
        from pipelines.registry import Registry

        if name is not None:
            config = config.model_copy(
                update={"registry": config.registry.model_copy(update={"model_name": name})}
            )
        registry = Registry(config)
        return cls.from_version(
            registry, registry.get(alias=alias, version=version), device=device, batch_size=batch_size
        )

    @classmethod
    def from_version(
        cls, registry: Registry, ref: VersionRef, *, device: str | None = None, batch_size: int = 64
    ) -> TicketClassifier:
        """The classifier of a version already looked up in the registry."""
        with tempfile.TemporaryDirectory() as folder:
            classifier = cls.from_dir(
                registry.download(ref, Path(folder)), device=device, batch_size=batch_size
            )
        classifier.version = ref.version
        return classifier

    @torch.inference_mode()
    def predict_proba_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (n, tenants) in input order. Texts are sorted by length so each
        batch pads little."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        result = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
            ).logits
            result[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return result

    def predict(self, tickets: Sequence[Mapping[str, Any]], top_k: int = 3) -> list[Prediction]:
        """Ranked tenants for ticket rows (dicts with the ticket columns)."""
        probabilities = self.predict_proba_texts(self.text_builder.build_many(tickets))
        return self.rank(probabilities, top_k)

    def rank(self, probabilities: np.ndarray, top_k: int = 3) -> list[Prediction]:
        k = min(top_k, len(self.labels))
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        predictions = []
        for row, ids in zip(probabilities, best, strict=True):
            ranked = [(self.labels.tenants[i], float(row[i])) for i in ids]
            predictions.append(
                Prediction(
                    tenant=ranked[0][0],
                    confidence=ranked[0][1],
                    top_k=ranked,
                    abstain=ranked[0][1] < self.abstain_threshold,
                )
            )
        return predictions
