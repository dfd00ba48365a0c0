"""``gpu``: the compute cores on one accelerator against their FLOP limit (issue #9).

    python -m benchmarks.gpu                          # Qwen3-0.6B shape, random weights, bf16, CUDA
    python -m benchmarks.gpu --reduced --device cpu   # a short check of the code path on CPU

Runs on a bare GPU machine (torch, transformers, peft, numpy, pandas, pyarrow; no Ray, MLflow or
pydantic) from the repository root, without installing the project. It calls the product's own
compute paths: ``TicketClassifier.predict_proba_ids`` (length-sorted, token-budget batches) for
scoring, ``model.wrap_for_finetune`` for the LoRA model and ``steps.training_step`` +
``optimizer_step`` for training. Weights are random (nothing is downloaded); token ids are random
and of exact lengths, so the FLOPs of every pass are known.

Three parts: bulk scoring (tickets/s at 128 and 512 tokens), request latency (batch of 1, and
the batches ``@serve.batch`` forms under concurrency) and LoRA training (tokens/s, MFU). Each is
compared with the limit the card allows: FLOPs at the peak *measured* here (a large matmul), or,
for small batches, the weight bytes at the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForSequenceClassification

from benchmarks.report import Report, percentile, publish
from pipelines.contract.columns import TEXT_COLUMNS
from pipelines.contract.text import TextBuilder
from pipelines.model import batching
from pipelines.model import steps as training_steps
from pipelines.model.artifact import LabelSet
from pipelines.model.base import preset_config
from pipelines.model.classifier import wrap_for_finetune
from pipelines.model.inference import TicketClassifier

log = logging.getLogger("benchmarks.gpu")

PRESET = "qwen3-0.6b"
NUM_LABELS = 268  # tenants of the production label set
QWEN3_PAD_TOKEN_ID = 151643  # "<|endoftext|>" in the published tokenizer
# --reduced: the same architecture, small enough for a CPU check of the code path.
REDUCED_SHAPE: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 4096,
}
SCORING_TARGET = 0.50  # fraction of the FLOP limit, bulk scoring at 128 tokens
TRAINING_TARGET = 0.35  # MFU of LoRA training


# The product's fine-tuning and optimizer settings live in pipelines.config (pydantic). A bare
# machine may lack pydantic, so these stand-ins carry the same defaults;
# tests/unit/test_bare_compute_imports.py checks that they match.
@dataclass(frozen=True)
class BareLora:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


@dataclass(frozen=True)
class BareModelConfig:
    finetune: str = "lora"
    lora: BareLora = field(default_factory=BareLora)


@dataclass(frozen=True)
class BareTrainConfig:
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    class_weighting: str = "inverse_sqrt"


def product_settings() -> tuple[Any, Any, str]:
    """The product's default ModelConfig and TrainConfig, or their stand-ins without pydantic."""
    try:
        from pipelines.config import ModelConfig, TrainConfig
    except ImportError:
        return BareModelConfig(), BareTrainConfig(), "stand-ins (no pydantic here)"
    return ModelConfig(), TrainConfig(), "pipelines.config defaults"


def benchmark_config(*, reduced: bool, attn: str) -> Qwen3Config:
    """The Qwen3-0.6B architecture (or its reduced shape) with a 268-tenant score head."""
    shape = REDUCED_SHAPE if reduced else {}
    vocab = shape.get("vocab_size", preset_config(PRESET).vocab_size)
    pad = min(QWEN3_PAD_TOKEN_ID, vocab - 1)
    return preset_config(
        PRESET,
        **shape,
        num_labels=NUM_LABELS,
        pad_token_id=pad,
        eos_token_id=pad,
        bos_token_id=pad,
        attn_implementation=attn,
    )


def random_classifier(
    config: Qwen3Config, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Qwen3ForSequenceClassification:
    """A random-init Qwen3 sequence classifier, built on ``device`` (no download)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForSequenceClassification(config)
    return model.to(dtype)


def scoring_classifier(
    config: Qwen3Config,
    device: torch.device,
    dtype: torch.dtype,
    *,
    max_length: int,
    batch_size: int,
    max_batch_tokens: int | None,
) -> TicketClassifier:
    """The serving/rescoring classifier around a random model (a merged LoRA is a plain model).
    No tokenizer: the benchmark feeds token ids to ``predict_proba_ids``."""
    model = random_classifier(config, device, dtype).eval()
    labels = LabelSet(tuple(f"tenant-{i:03d}" for i in range(config.num_labels)))
    text_builder = TextBuilder(fields=TEXT_COLUMNS, max_field_chars=200, max_description_chars=1200)
    return TicketClassifier(
        model,
        None,
        labels,
        text_builder,
        max_length=max_length,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
    )


def lora_model(
    config: Qwen3Config, device: torch.device, model_config: Any
) -> tuple[torch.nn.Module, FlopModel]:
    """The model training builds (fp32 weights, LoRA as configured, score head trained) and its
    FLOP accounting."""
    base = random_classifier(config, device, torch.float32)
    flops = FlopModel.of(base)
    model = wrap_for_finetune(base, model_config)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, flops.with_trainable(trainable)


def random_tickets(count: int, length: int, pad_token_id: int, seed: int) -> list[np.ndarray]:
    """``count`` tickets of exactly ``length`` random token ids (never the pad id, so the
    classifier pools the last position)."""
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, pad_token_id, size=(count, length), dtype=np.int64))


@dataclass(frozen=True)
class FlopModel:
    """FLOPs per token.

    ``matmul_params`` (N): the weights of every ``nn.Linear`` (attention projections, MLP, score
    head), i.e. no embedding (a lookup) and no norms. Forward: 2·N + attention, where attention
    is 2·2·layers·seq·(heads·head_dim) for QK^T and AV, halved for the causal mask. LoRA
    training: forward 2·N, backward activation gradients 2·N (frozen weights need no weight
    gradients), 6 per trainable weight (score head, LoRA A/B: forward, input and weight
    gradients), attention 3× its forward (backward: 4 matmuls for 2).
    """

    matmul_params: int
    score_params: int
    layers: int
    attention_width: int
    trainable_params: int = 0

    @classmethod
    def of(cls, model: Qwen3ForSequenceClassification) -> FlopModel:
        config = model.config
        return cls(
            matmul_params=sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
            score_params=model.score.weight.numel(),
            layers=config.num_hidden_layers,
            attention_width=config.num_attention_heads * config.head_dim,
        )

    def with_trainable(self, trainable_params: int) -> FlopModel:
        return FlopModel(
            self.matmul_params, self.score_params, self.layers, self.attention_width, trainable_params
        )

    def attention_forward(self, seq: int) -> float:
        return 2 * 2 * self.layers * seq * self.attention_width / 2

    def forward(self, seq: int) -> float:
        return 2 * self.matmul_params + self.attention_forward(seq)

    def training(self, seq: int) -> float:
        frozen = self.matmul_params - self.score_params
        return 4 * frozen + 6 * self.trainable_params + 3 * self.attention_forward(seq)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], object]) -> float:
    """Seconds of ``run``, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def measure_peak(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    """FLOP/s of a size³ matmul in ``dtype`` on ``device``: the best of ``reps`` timings (each of
    a few back-to-back products), after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    inner = 5 if device.type == "cuda" else 1

    def products() -> None:
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    timed(device, products)
    best = min(timed(device, products) for _ in range(reps))
    return inner * 2 * size**3 / best


def measure_bandwidth(device: torch.device, mib: int, reps: int) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the best of ``reps``."""
    source = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    timed(device, lambda: target.copy_(source))
    best = min(timed(device, lambda: target.copy_(source)) for _ in range(reps))
    return 2 * source.numel() / best


@dataclass
class Limits:
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s

    def seconds(self, flops: float, weight_bytes: float) -> float:
        """The least time a pass can take: compute-bound or weight-read-bound, whichever is more."""
        return max(flops / self.peak_flops, weight_bytes / self.bandwidth)


def bulk_scoring(classifier: TicketClassifier, length: int, tokens: int, reps: int) -> tuple[int, float]:
    """Tickets and median seconds to score ``tokens`` worth of ``length``-token tickets."""
    tickets = random_tickets(max(1, tokens // length), length, classifier.pad_token_id, seed=length)
    classifier.predict_proba_ids(tickets)  # warm-up: kernels, allocator, cuBLAS heuristics
    seconds = [timed(classifier.device, lambda: classifier.predict_proba_ids(tickets)) for _ in range(reps)]
    return len(tickets), percentile(seconds, 50)


def request_latencies(classifier: TicketClassifier, length: int, batch: int, reps: int) -> list[float]:
    """Seconds of one forward pass over ``batch`` requests of ``length`` tokens, ``reps`` times:
    what each request of a ``@serve.batch`` batch waits for the model."""
    requests = random_tickets(batch, length, classifier.pad_token_id, seed=batch)
    for _ in range(min(5, reps)):
        classifier.predict_proba_ids(requests)
    return [timed(classifier.device, lambda: classifier.predict_proba_ids(requests)) for _ in range(reps)]


@dataclass
class TrainingResult:
    tokens_per_s: float
    seconds_per_step: float
    final_loss: float
    peak_memory_gib: float


def lora_training(
    model: torch.nn.Module,
    device: torch.device,
    train_config: Any,
    *,
    batch: int,
    length: int,
    steps: int,
    warmup: int,
) -> TrainingResult:
    """``warmup`` + ``steps`` optimizer steps of the product's loop (class-weighted loss, bf16
    autocast on CUDA, clipping, AdamW, schedule); tokens/s over the timed ``steps``."""
    pad = model.config.pad_token_id
    optimizer = training_steps.make_optimizer(model, train_config)
    scheduler = training_steps.make_scheduler(optimizer, warmup + steps, train_config.warmup_ratio)
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 500, size=model.config.num_labels).tolist()
    weights = training_steps.class_weights(counts, train_config.class_weighting)
    weights = weights.to(device) if weights is not None else None
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    batches = []
    for seed in range(min(4, warmup + steps)):
        padded = batching.pad_batch(random_tickets(batch, length, pad, seed=100 + seed), pad)
        padded["labels"] = torch.as_tensor(rng.integers(0, model.config.num_labels, size=batch))
        batches.append({name: tensor.to(device) for name, tensor in padded.items()})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss = math.nan

    def step(index: int) -> None:
        nonlocal loss
        output = training_steps.training_step(
            model,
            batches[index % len(batches)],
            weights=weights,
            loss_scale=1.0,
            autocast_dtype=autocast_dtype,
        )
        training_steps.optimizer_step(model, optimizer, scheduler, train_config.max_grad_norm)
        loss = output.loss

    for index in range(warmup):
        step(index)
    seconds = timed(device, lambda: [step(warmup + index) for index in range(steps)])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    return TrainingResult(batch * length * steps / seconds, seconds / steps, loss, peak)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu or args.cpu_bf16 else torch.float32
    model_config, train_config, settings_source = product_settings()
    config = benchmark_config(reduced=args.reduced, attn=args.attn)

    log.info("measuring the matmul peak (%d³, %s) and copy bandwidth on %s", args.peak_size, dtype, device)
    limits = Limits(
        measure_peak(device, dtype, args.peak_size, args.peak_reps),
        measure_bandwidth(device, args.bandwidth_mib, args.peak_reps),
    )
    log.info("peak %.1f TFLOP/s, bandwidth %.0f GB/s", limits.peak_flops / 1e12, limits.bandwidth / 1e9)
    report = Report(
        _title(args, device, config), ["measure", "value", "limit", "fraction of limit", "target"]
    )
    report.add(
        f"matmul peak, {args.peak_size}³ {_name(dtype)} (TFLOP/s)", limits.peak_flops / 1e12, "", "", ""
    )
    report.add("copy bandwidth (GB/s)", limits.bandwidth / 1e9, "", "", "")

    classifier = scoring_classifier(
        config, device, dtype, max_length=max(_ints(args.lengths)), batch_size=1, max_batch_tokens=None
    )
    flops = FlopModel.of(classifier.model)
    _scoring_rows(report, classifier, args, flops, limits, gpu)
    _latency_rows(report, classifier, args, flops, limits, dtype)
    del classifier
    if gpu:
        torch.cuda.empty_cache()

    model, train_flops = lora_model(config, device, model_config)
    trained = _training_rows(report, model, device, train_config, args, train_flops, limits, gpu)
    report.notes.extend(_notes(args, config, flops, train_flops, trained, model_config, settings_source))
    report.notes.append(f"whole run {time.monotonic() - started:.0f} s")
    publish(report, record=not args.no_record)


def _scoring_rows(
    report: Report,
    classifier: TicketClassifier,
    args: argparse.Namespace,
    flops: FlopModel,
    limits: Limits,
    gpu: bool,
) -> None:
    """Bulk scoring at every length and token budget: eager with the configured attention, then
    (optional) flash_attention_2 and torch.compile, each skipped with a note if it fails."""
    eager = classifier.model
    variants: list[tuple[str, Callable[[], None]]] = [(args.attn, lambda: None)]
    if _flash_attention_2_available(args, gpu):
        variants.append(("flash_attention_2", lambda: eager.set_attn_implementation("flash_attention_2")))
    if args.compile:
        variants.append((f"{args.attn} + torch.compile", lambda: _compile_scoring(classifier, eager, args)))
    for name, prepare in variants:
        try:
            prepare()
            for budget in _ints(args.max_batch_tokens):
                classifier.batch_size = classifier.max_batch_tokens = budget  # the budget decides
                for length in _ints(args.lengths):
                    log.info("bulk scoring, %s, %d tokens, budget %d", name, length, budget)
                    tickets, seconds = bulk_scoring(classifier, length, args.bulk_tokens, args.reps)
                    rate = tickets / seconds
                    limit = limits.peak_flops / (length * flops.forward(length))
                    target = _target(SCORING_TARGET, rate / limit, gpu) if length == 128 else ""
                    report.add(
                        f"bulk scoring, {length} tokens, {budget}-token batches, {name} (tickets/s)",
                        rate,
                        limit,
                        rate / limit,
                        target,
                    )
        except Exception as exc:  # optional variants must not cost the rest of the run
            if name == args.attn:
                raise
            log.warning("%s not measured: %s", name, exc)
            report.notes.append(f"{name} not measured: {type(exc).__name__}: {exc}")
    classifier.model = eager
    eager.set_attn_implementation(args.attn)


def _compile_scoring(classifier: TicketClassifier, eager: torch.nn.Module, args: argparse.Namespace) -> None:
    eager.set_attn_implementation(args.attn)
    classifier.model = torch.compile(eager)


def _latency_rows(
    report: Report,
    classifier: TicketClassifier,
    args: argparse.Namespace,
    flops: FlopModel,
    limits: Limits,
    dtype: torch.dtype,
) -> None:
    """A single request, then the batches @serve.batch forms under concurrency (eager model)."""
    length = _ints(args.lengths)[0]
    weight_bytes = flops.matmul_params * torch.finfo(dtype).bits / 8
    for batch in (1, *_ints(args.concurrency)):
        log.info("request latency, batch of %d × %d tokens", batch, length)
        classifier.batch_size, classifier.max_batch_tokens = batch, None  # one forward pass
        seconds = request_latencies(classifier, length, batch, args.latency_reps)
        least = limits.seconds(batch * length * flops.forward(length), weight_bytes)
        p50, p99 = percentile(seconds, 50), percentile(seconds, 99)
        what = "single request" if batch == 1 else f"batch of {batch}"
        report.add(f"{what}, {length} tokens: latency p50 (ms)", p50 * 1e3, least * 1e3, least / p50, "")
        report.add(f"{what}, {length} tokens: latency p99 (ms)", p99 * 1e3, least * 1e3, least / p99, "")
        if batch > 1:
            report.add(f"{what}: throughput (requests/s)", batch / p50, batch / least, least / p50, "")


def _training_rows(
    report: Report,
    model: torch.nn.Module,
    device: torch.device,
    train_config: Any,
    args: argparse.Namespace,
    train_flops: FlopModel,
    limits: Limits,
    gpu: bool,
) -> TrainingResult:
    """LoRA training as the product runs it (eager), then (optional) under torch.compile."""
    limit = limits.peak_flops / train_flops.training(args.train_length)
    variants: list[tuple[str, Callable[[], torch.nn.Module]]] = [("", lambda: model)]
    if args.compile:
        variants.append((", torch.compile", lambda: torch.compile(model)))
    measured = None
    for suffix, prepare in variants:
        log.info("LoRA training%s, %d × %d tokens a step", suffix, args.train_batch, args.train_length)
        try:
            result = lora_training(
                prepare(),
                device,
                train_config,
                batch=args.train_batch,
                length=args.train_length,
                steps=args.train_steps,
                warmup=args.train_warmup,
            )
        except Exception as exc:  # the compiled variant is optional
            if not suffix:
                raise
            log.warning("LoRA training%s not measured: %s", suffix, exc)
            report.notes.append(f"LoRA training{suffix} not measured: {type(exc).__name__}: {exc}")
            continue
        measured = measured or result
        mfu = result.tokens_per_s / limit
        report.add(
            f"LoRA training, {args.train_batch} × {args.train_length} tokens{suffix} (tokens/s)",
            result.tokens_per_s,
            limit,
            mfu,
            _target(TRAINING_TARGET, mfu, gpu),
        )
    assert measured is not None  # the eager variant raises rather than being skipped
    return measured


def _flash_attention_2_available(args: argparse.Namespace, gpu: bool) -> bool:
    """Whether to measure flash_attention_2 too: on CUDA, where flash-attn is installed."""
    from transformers.utils import is_flash_attn_2_available

    return gpu and args.attn != "flash_attention_2" and is_flash_attn_2_available()


def _target(target: float, fraction: float, gpu: bool) -> str:
    if not gpu:
        return f"≥ {target:.2f} (GPU only)"
    return f"≥ {target:.2f} ({'met' if fraction >= target else 'missed'})"


def _title(args: argparse.Namespace, device: torch.device, config: Qwen3Config) -> str:
    shape = f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}"
    if device.type != "cuda":
        return (
            f"gpu benchmark: CPU verification at a reduced shape ({shape}), not a GPU result"
            if args.reduced
            else f"gpu benchmark: CPU run of the Qwen3-0.6B shape ({shape}), not a GPU result"
        )
    name = torch.cuda.get_device_name(device)
    if args.reduced:
        return f"gpu benchmark: {name}, reduced shape ({shape}), random weights"
    return f"gpu benchmark: {name}, Qwen3-0.6B shape ({shape}), random weights, bf16"


def _notes(
    args: argparse.Namespace,
    config: Qwen3Config,
    flops: FlopModel,
    train_flops: FlopModel,
    trained: TrainingResult,
    model_config: Any,
    settings_source: str,
) -> list[str]:
    length = 128 if 128 in _ints(args.lengths) else _ints(args.lengths)[0]
    return [
        f"shape: {config.num_hidden_layers} layers, hidden {config.hidden_size}, intermediate "
        f"{config.intermediate_size}, heads {config.num_attention_heads}/{config.num_key_value_heads} × "
        f"{config.head_dim}, vocab {config.vocab_size}, {config.num_labels} labels; "
        f"N = {flops.matmul_params / 1e6:.1f} M matmul weights (every nn.Linear: projections, MLP, "
        f"score head; no embedding, no norms); {config._attn_implementation} attention",
        "scoring FLOP/token = 2·N + 2·2·layers·seq·(heads·head_dim)/2 (QK^T and AV, causal half) = "
        f"{flops.forward(length) / 1e6:.4g} MFLOP at {length} tokens; limit = tickets/s at the measured "
        "matmul peak, or the weight bytes at the copy bandwidth where that is slower",
        "bulk: random token ids of exact length through TicketClassifier.predict_proba_ids, "
        f"length-sorted, max_batch_tokens={args.max_batch_tokens}, softmax and copy to host "
        f"included; {args.bulk_tokens} tokens a pass, median of {args.reps} after a warm-up pass",
        f"latency: {args.latency_reps} timed forward passes each (device synchronised); a batch of B "
        "is B requests that @serve.batch groups, each waiting the batch's forward time (the real "
        "endpoint adds its batch wait and HTTP); fraction = least possible time / measured",
        f"training: peft LoRA r={_lora(model_config)} from model.wrap_for_finetune ({settings_source}), "
        "score head trained, fp32 weights with bf16 autocast on CUDA (the product's loop), "
        "class-weighted loss, clipping, AdamW; FLOP/token = 4·N_frozen + 6·N_trainable + "
        f"3·attention = {train_flops.training(args.train_length) / 1e6:.4g} MFLOP at {args.train_length} "
        f"tokens (N_trainable = {train_flops.trainable_params / 1e6:.2f} M); "
        f"{args.train_steps} timed steps after {args.train_warmup}; {trained.seconds_per_step * 1e3:.1f} ms "
        f"a step, last loss {trained.final_loss:.3f}, peak memory {_gib(trained.peak_memory_gib)}",
    ]


def _lora(model_config: Any) -> str:
    lora = model_config.lora
    return f"{lora.r}, alpha {lora.alpha}, dropout {lora.dropout} on {','.join(lora.target_modules)}"


def _gib(value: float) -> str:
    return "n/a (CPU)" if math.isnan(value) else f"{value:.1f} GiB"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reduced", action="store_true", help="a reduced shape, shorter runs (CPU check)")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 weights on CPU too (default fp32)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure bulk scoring and training under torch.compile (the product runs eager)",
    )
    parser.add_argument("--lengths", default="128,512", help="ticket lengths in tokens (default 128,512)")
    parser.add_argument("--concurrency", default="8,32", help="batch sizes @serve.batch forms (default 8,32)")
    sizes = parser.add_argument_group("sizes (defaults: full shape / --reduced)")
    sizes.add_argument("--bulk-tokens", type=int, help="tokens per bulk pass (2^19 / 2^13)")
    sizes.add_argument(
        "--max-batch-tokens",
        help="token budgets of bulk scoring batches, comma-separated (16384,65536 / 4096)",
    )
    sizes.add_argument("--reps", type=int, help="timed bulk passes (3 / 2)")
    sizes.add_argument("--latency-reps", type=int, help="timed passes per latency batch size (200 / 10)")
    sizes.add_argument("--train-batch", type=int, help="tickets per training step (64 / 4)")
    sizes.add_argument("--train-length", type=int, default=128, help="tokens per training ticket (128)")
    sizes.add_argument("--train-steps", type=int, help="timed training steps (20 / 2)")
    sizes.add_argument("--train-warmup", type=int, help="untimed training steps first (3 / 1)")
    sizes.add_argument("--peak-size", type=int, help="matmul size for the measured peak (8192 / 1024)")
    sizes.add_argument("--peak-reps", type=int, help="peak and bandwidth timings, best kept (10 / 3)")
    sizes.add_argument("--bandwidth-mib", type=int, help="copy size for the bandwidth (1024 / 128)")
    args = parser.parse_args(argv)
    defaults = {
        "bulk_tokens": (2**19, 2**13),
        "max_batch_tokens": ("16384,65536", "4096"),
        "reps": (3, 2),
        "latency_reps": (200, 10),
        "train_batch": (64, 4),
        "train_steps": (20, 2),
        "train_warmup": (3, 1),
        "peak_size": (8192, 1024),
        "peak_reps": (10, 3),
        "bandwidth_mib": (1024, 128),
    }
    for name, (full, reduced) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, reduced if args.reduced else full)
    counts = [getattr(args, name) for name in defaults if name not in ("max_batch_tokens", "train_warmup")]
    lists = [_ints(text) for text in (args.lengths, args.max_batch_tokens, args.concurrency)]
    if args.train_warmup < 0 or min(counts + [n for values in lists for n in values]) < 1:
        parser.error("sizes, counts and lengths must be positive (the warm-up may be 0)")
    if not lists[0] or not lists[1]:
        parser.error("--lengths and --max-batch-tokens need at least one value")
    return args


if __name__ == "__main__":
    main()
