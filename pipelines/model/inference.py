"""``TicketClassifier``: the one inference class. Serving, rescoring and evaluation wrap it.

Its forward path imports neither Ray nor MLflow, so it runs on a bare GPU machine.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipelines.contract.text import TextBuilder
from pipelines.errors import ModelError
from pipelines.model.artifact import LabelSet, load_classifier
from pipelines.model.batching import pad_batch

log = logging.getLogger(__name__)

# How a classifier runs on a CPU (``inference.cpu_runtime``; a GPU always runs bf16). The values
# are repeated in ``pipelines.config`` (no torch there); a unit test keeps the two equal.
CpuRuntime = Literal["auto", "eager", "int8"]
CPU_RUNTIMES: tuple[str, ...] = ("auto", "eager", "int8")
# ``auto`` picks int8 from this hidden size on: 1.5× tickets/s at 512 (the compute-bound
# benchmark base), 0.7-1.0× at 128 (tiny), where quantizing activations costs what the int8
# matmuls save (benchmarks/RESULTS.md, cpu_runtime).
INT8_MIN_HIDDEN_SIZE = 512


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits`` (n, classes) divided by ``temperature`` (float32)."""
    scaled = logits.astype(np.float32) / np.float32(temperature)
    exponentials = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    tenant: str
    confidence: float
    top_k: list[tuple[str, float]]
    abstain: bool  # below the version's threshold: route to human triage

    def as_record(self) -> dict[str, Any]:
        """The one serialized form of a prediction (Serve's answer, the pyfunc's row, the
        rescore columns): ``tenant``, ``confidence``, ``top_k`` as ``[{tenant, score}]``,
        ``abstain``."""
        return {
            "tenant": self.tenant,
            "confidence": self.confidence,
            "top_k": [{"tenant": tenant, "score": score} for tenant, score in self.top_k],
            "abstain": self.abstain,
        }


def resolve_cpu_runtime(runtime: CpuRuntime, hidden_size: int) -> Literal["eager", "int8"]:
    """The runtime ``runtime`` means for a model of ``hidden_size`` (``auto``: the faster one)."""
    if runtime not in CPU_RUNTIMES:
        raise ModelError(f"unknown CPU runtime {runtime!r}; choose from {list(CPU_RUNTIMES)}")
    if runtime == "auto":
        return "int8" if hidden_size >= INT8_MIN_HIDDEN_SIZE else "eager"
    return runtime


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (fp32, LoRA merged) with the decoder's ``nn.Linear`` layers quantized, in place.

    PyTorch dynamic quantization: weights int8 per output channel, activations quantized on
    each forward pass (one scale over the whole input tensor), int8 matmuls accumulating in
    int32. The ``score`` head stays fp32: a sliver of the compute, and the answers are its
    logits. Tolerance and speed: benchmarks/RESULTS.md, tests/unit/model/test_cpu_runtime.py.
    """
    # torch.ao.quantization is deprecated in favour of torchao but still shipped (torch 2.13): its
    # fbgemm int8 kernels are the fast ones on a CPU without torch.compile; the int8 matmul that
    # per-token schemes use (torch._int_mm) measured ~30× slower than fp32 here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        decoder = model.get_decoder()
        quantize_dynamic(decoder, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    log.info("CPU runtime int8: the decoder's linear layers quantized (dynamic, per channel)")
    return model


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
        temperature: float = 1.0,
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
    ) -> None:
        """``temperature``: logits are divided by it before the softmax (fit on the validation
        days; 1 leaves them as trained); ``batch_size``: tickets per forward pass at most;
        ``max_batch_tokens`` (optional): also at most this many padded tokens per pass, so short
        tickets go in larger batches."""
        if batch_size < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
            raise ModelError(
                f"batch_size and max_batch_tokens must be >= 1, got {batch_size}, {max_batch_tokens}"
            )
        if not temperature > 0:
            raise ModelError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.labels = labels
        self.text_builder = text_builder
        self.max_length = max_length
        self.abstain_threshold = abstain_threshold
        self.temperature = temperature
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        # Batches are right-padded with the id the model pools on (its last non-pad token).
        self.pad_token_id: int = model.config.pad_token_id
        if self.pad_token_id is None:
            raise ModelError(
                "the model config has no pad_token_id; the classifier pools the last non-pad token"
            )
        self.version: str | None = None  # the registry version, when loaded from the registry
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        *,
        device: str | None = None,
        base_dir: Path | None = None,
        batch_size: int = 64,
        merge: bool = True,
        cpu_runtime: CpuRuntime = "eager",
    ) -> TicketClassifier:
        """Load a saved classifier directory (bf16 on GPU, fp32 on CPU). ``merge``: fold the LoRA
        adapter into the base weights (faster; see benchmarks/RESULTS.md). ``cpu_runtime``: how
        it runs when the device is a CPU (:func:`resolve_cpu_runtime`); ignored on a GPU.

        int8 scores each ticket alone (``batch_size`` 1): its activations are quantized with
        one scale per forward pass, so in a batch a ticket's answer would move with its
        neighbours (and their padding); alone it is also faster on a CPU (benchmarks/RESULTS.md)."""
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        model, tokenizer, labels, descriptor = load_classifier(
            model_dir, base_dir=base_dir, dtype=dtype, merge=merge
        )
        if target.type == "cpu" and resolve_cpu_runtime(cpu_runtime, model.config.hidden_size) == "int8":
            if not merge:
                raise ModelError("the int8 CPU runtime quantizes the merged model: load it with merge=True")
            model, batch_size = quantize_int8(model), 1
        return cls(
            model.to(target),
            tokenizer,
            labels,
            TextBuilder.from_settings(descriptor["text"]),
            max_length=descriptor["max_length"],
            abstain_threshold=float(descriptor.get("abstain_threshold", 0.0)),
            temperature=float(descriptor.get("temperature", 1.0)),  # versions before calibration: 1
            batch_size=batch_size,
        )

    def predict_proba_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated class probabilities (n, tenants) in input order."""
        return softmax(self.predict_logits_texts(texts), self.temperature)

    def predict_logits_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits (n, tenants) in input order, before the temperature."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # A ticket whose text is empty (every field blank) encodes to no ids: give it one pad
        # token, so it gets an answer (a low-confidence one) instead of failing its whole batch.
        return self.predict_logits_ids([ids if len(ids) else [self.pad_token_id] for ids in encoded])

    def predict_proba_ids(self, encoded: Sequence[Sequence[int]]) -> np.ndarray:
        """Calibrated class probabilities (n, tenants) of already-tokenized tickets, in input order."""
        return softmax(self.predict_logits_ids(encoded), self.temperature)

    @torch.inference_mode()
    def predict_logits_ids(self, encoded: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw logits (n, tenants) of already-tokenized tickets, in input order. Tickets are
        sorted by length so each batch pads little."""
        result = np.empty((len(encoded), len(self.labels)), dtype=np.float32)
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        for rows in self._batches([len(encoded[i]) for i in order]):
            picked = order[rows]
            batch = pad_batch([encoded[i] for i in picked], self.pad_token_id)
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
            ).logits
            result[picked] = logits.float().cpu().numpy()
        return result

    def _batches(self, sorted_lengths: Sequence[int]) -> Iterator[slice]:
        """Consecutive slices of length-sorted tickets: ``batch_size`` tickets at most and, with
        ``max_batch_tokens``, at most that many padded tokens (a longer ticket goes alone)."""
        start = 0
        while start < len(sorted_lengths):
            stop = min(start + self.batch_size, len(sorted_lengths))
            if self.max_batch_tokens is not None:
                # Sorted ascending: a batch's padded size is its count times its last length.
                fits = start + 1
                while fits < stop and (fits + 1 - start) * sorted_lengths[fits] <= self.max_batch_tokens:
                    fits += 1
                stop = fits
            yield slice(start, stop)
            start = stop

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
