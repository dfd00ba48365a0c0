"""Base models: presets, the tiny base built locally, and loading any local Qwen3 directory.

This module (with its later LoRA/head helpers) is the only one that touches transformers model
classes. A base directory is a standard Hugging Face directory (``config.json``, safetensors
weights, tokenizer files) loaded offline; the tiny preset is built here from the ticket archive
so that nothing is downloaded, and a real checkpoint such as Qwen3-0.6B loads the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pipelines.errors import ModelError

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
BASE_DESCRIPTOR = "oncall_base.json"

# Architecture of each preset; ``vocab_size`` of "tiny" comes from its trained tokenizer.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    },
    # The published Qwen3-0.6B config (its tokenizer holds 151,669 tokens; the embedding
    # matrix is padded to 151,936 rows). Used to check the real shape with random weights.
    "qwen3-0.6b": {
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": True,
    },
}


def preset_config(preset: str, **overrides: Any) -> Qwen3Config:
    """A Qwen3 config of a preset's shape, with ``overrides`` (e.g. vocab_size, pad_token_id)."""
    if preset not in PRESETS:
        raise ModelError(f"unknown base preset '{preset}'; choose from {sorted(PRESETS)}")
    return Qwen3Config(**{**PRESETS[preset], **overrides})


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any script, no unknown tokens) trained on ticket texts."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=PAD_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


def build_preset_base(
    preset: str,
    texts: Iterable[str],
    out: Path,
    *,
    vocab_size: int,
    max_length: int,
    seed: int = 0,
    overwrite: bool = False,
    shape: Mapping[str, Any] | None = None,
) -> Path:
    """Train a tokenizer on ``texts``, build a random-init base of ``preset`` and save both.

    ``shape`` overrides the preset's architecture (e.g. a larger, compute-bound model for load
    tests and benchmarks).
    Saved as a Qwen3 causal-LM directory, like a published checkpoint, so that the same
    :func:`load_base_classifier` serves both. Written aside and moved into place, so a crash
    never leaves a half-written base behind.
    """
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} is not empty; pass --overwrite to rebuild the base there")
    tokenizer = train_tokenizer(texts, vocab_size, model_max_length=max_length)
    pad_id = tokenizer.pad_token_id
    config = preset_config(
        preset,
        **(shape or {}),
        vocab_size=len(tokenizer),
        pad_token_id=pad_id,
        eos_token_id=pad_id,
        bos_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        descriptor = {
            "preset": preset,
            "shape": dict(shape or {}),
            "seed": seed,
            "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (staging / BASE_DESCRIPTOR).write_text(json.dumps(descriptor, indent=2) + "\n")
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("built %s base at %s (%s)", preset, out, descriptor)
    return out


def _check_base_dir(base_dir: Path) -> dict[str, Any]:
    config_file = base_dir / "config.json"
    if not config_file.is_file():
        raise ModelError(
            f"{base_dir} is not a model directory (no config.json); build the tiny base with "
            "'oncall-router init-base' or set model.base to a local Qwen3 checkpoint directory"
        )
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "qwen3":
        raise ModelError(f"{config_file}: model_type is {config.get('model_type')!r}, expected 'qwen3'")
    return config


def load_tokenizer(base_dir: Path, max_length: int | None = None) -> PreTrainedTokenizerBase:
    """The base's tokenizer, offline, with a pad token and right padding.

    Qwen3 classifiers pool the last non-pad token, so every batch > 1 needs ``pad_token_id``.
    """
    if not (base_dir / "tokenizer_config.json").is_file():
        raise ModelError(f"{base_dir} holds no tokenizer (no tokenizer_config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{base_dir}: cannot load the tokenizer: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or PAD_TOKEN
    tokenizer.padding_side = "right"
    if max_length is not None:
        tokenizer.model_max_length = max_length
    return tokenizer


def base_fingerprint(base_dir: Path) -> str:
    """Identifies a base: its config and the names and sizes of its weight files.

    Cheap enough for multi-GB checkpoints; an adapter is useless on any other base.
    """
    digest = hashlib.sha256((base_dir / "config.json").read_bytes())
    for weights in sorted(base_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]
