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
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
)
from transformers.utils import logging as hf_logging

from pipelines.errors import ModelError
from pipelines.labels import LabelSet

if TYPE_CHECKING:
    from pipelines.config import ModelConfig

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
BASE_DESCRIPTOR = "oncall_base.json"
HEAD_NAME = "score"  # the classification head of Qwen3ForSequenceClassification
# A saved classifier directory (see save_classifier).
CLASSIFIER_DESCRIPTOR = "classifier.json"
ADAPTER_DIR = "adapter"
WEIGHTS_DIR = "weights"
TOKENIZER_DIR = "tokenizer"
BUNDLED_BASE_DIR = "base"

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


def load_base_classifier(
    base_dir: Path,
    num_labels: int,
    *,
    pad_token_id: int,
    dtype: torch.dtype = torch.float32,
) -> Qwen3ForSequenceClassification:
    """A sequence classifier on a local Qwen3 base; the ``score`` head starts from random init."""
    _check_base_dir(base_dir)
    if num_labels < 1:
        raise ModelError(f"num_labels must be >= 1, got {num_labels}")
    config = AutoConfig.from_pretrained(base_dir, local_files_only=True)
    config.num_labels = num_labels
    config.pad_token_id = pad_token_id
    # The load report would call the new head "MISSING" on every load; it is expected here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return Qwen3ForSequenceClassification.from_pretrained(
            base_dir, config=config, dtype=dtype, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def build_classifier(
    base_dir: Path, num_labels: int, *, pad_token_id: int, model_config: ModelConfig
) -> torch.nn.Module:
    """The trainable classifier: LoRA on the configured projections with the ``score`` head
    trained fully, or (``finetune: full``) every weight trainable. One code path for both."""
    model = load_base_classifier(base_dir, num_labels, pad_token_id=pad_token_id)
    return wrap_for_finetune(model, model_config)


def wrap_for_finetune(model: Qwen3ForSequenceClassification, model_config: ModelConfig) -> torch.nn.Module:
    """``model`` as :func:`build_classifier` trains it: wrapped in LoRA (``score`` head fully
    trained) or, for ``finetune: full``, unchanged. Reads ``finetune`` and ``lora`` only, so the
    GPU benchmark calls it on a random-init model without a base directory."""
    if model_config.finetune == "full":
        return model
    lora = model_config.lora
    peft_config = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=[HEAD_NAME],
    )
    return get_peft_model(model, peft_config)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the adapter and head (LoRA) or every weight (full)."""
    if isinstance(model, PeftModel):
        return get_peft_model_state_dict(model)
    return model.state_dict()


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise ModelError(f"checkpoint holds unexpected weights: {result.unexpected_keys[:5]}")
    else:
        model.load_state_dict(state)


def saved_trainable_state(model_dir: Path, base_dir: Path) -> tuple[dict[str, torch.Tensor], LabelSet]:
    """The trainable state of a saved classifier (what :func:`trainable_state_dict` returns for
    it in training), to warm-start a new run from, and its labels. The new run must use the
    same base and fine-tuning mode."""
    descriptor = read_classifier_descriptor(model_dir)
    if descriptor["finetune"] == "lora" and base_fingerprint(base_dir) != descriptor["base"]["fingerprint"]:
        raise ModelError(
            f"cannot warm-start from {model_dir}: it was trained on another base than {base_dir} "
            f"(fingerprint {descriptor['base']['fingerprint']} != {base_fingerprint(base_dir)})"
        )
    folder = model_dir / (ADAPTER_DIR if descriptor["finetune"] == "lora" else WEIGHTS_DIR)
    state: dict[str, torch.Tensor] = {}
    for weights in sorted(folder.glob("*.safetensors")):
        state.update(load_file(weights))
    if not state:
        raise ModelError(f"{folder} holds no safetensors weights")
    return state, LabelSet.load(model_dir)


def grow_head(
    previous: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], known_labels: int
) -> dict[str, torch.Tensor]:
    """``previous`` reshaped onto a model whose head has more classes (``fresh``, its newly
    initialised state): the head's rows of the ``known_labels`` old tenants are copied, the rows
    of new tenants keep their fresh initialisation; every other weight must match exactly."""
    grown = {}
    for name, tensor in previous.items():
        if name not in fresh:
            raise ModelError(f"warm start: weight {name} does not exist in the new model")
        target = fresh[name]
        if tensor.shape == target.shape:
            grown[name] = tensor
        elif (
            HEAD_NAME in name.split(".")
            and tensor.shape[1:] == target.shape[1:]
            and (tensor.shape[0] == known_labels <= target.shape[0])
        ):
            rows = target.detach().clone()
            rows[:known_labels] = tensor
            grown[name] = rows
        else:
            raise ModelError(
                f"warm start: weight {name} has shape {tuple(tensor.shape)}, the new model "
                f"{tuple(target.shape)} (another base or LoRA shape?)"
            )
    return grown


def base_fingerprint(base_dir: Path) -> str:
    """Identifies a base: its config and the names and sizes of its weight files.

    Cheap enough for multi-GB checkpoints; an adapter is useless on any other base.
    """
    digest = hashlib.sha256((base_dir / "config.json").read_bytes())
    for weights in sorted(base_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def save_classifier(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    labels: LabelSet,
    out: Path,
    *,
    base_dir: Path,
    text: dict[str, Any],
    max_length: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing classifier directory: JSON + safetensors only (no pickle)."""
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    finetune = "lora" if isinstance(model, PeftModel) else "full"
    if finetune == "lora":
        model.save_pretrained(out / ADAPTER_DIR)
    else:
        model.save_pretrained(out / WEIGHTS_DIR)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    labels.save(out)
    descriptor = {
        "format": 1,
        "finetune": finetune,
        "num_labels": len(labels),
        "max_length": max_length,
        "text": text,
        "base": _bundle_or_reference_base(base_dir, out),
        **(extra or {}),
    }
    (out / CLASSIFIER_DESCRIPTOR).write_text(json.dumps(descriptor, indent=2) + "\n")
    return out


def _bundle_or_reference_base(base_dir: Path, out: Path) -> dict[str, Any]:
    """A preset base (small, random-init, useless elsewhere) is copied into the classifier
    directory; a large base is referenced by path and fingerprint, checked on load."""
    reference: dict[str, Any] = {"path": str(base_dir.resolve()), "fingerprint": base_fingerprint(base_dir)}
    if (base_dir / BASE_DESCRIPTOR).is_file():
        bundled = out / BUNDLED_BASE_DIR
        bundled.mkdir(exist_ok=True)
        for name in ("config.json", BASE_DESCRIPTOR, *(p.name for p in base_dir.glob("*.safetensors"))):
            shutil.copy2(base_dir / name, bundled / name)
        reference["bundled"] = BUNDLED_BASE_DIR
    return reference


def read_classifier_descriptor(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CLASSIFIER_DESCRIPTOR
    if not path.is_file():
        raise ModelError(f"{model_dir} is not a classifier directory (no {CLASSIFIER_DESCRIPTOR})")
    return json.loads(path.read_text())


def load_classifier(
    model_dir: Path, *, base_dir: Path | None = None, dtype: torch.dtype = torch.float32, merge: bool = True
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, LabelSet, dict[str, Any]]:
    """A saved classifier ready for inference (LoRA merged into the base weights by default:
    1.3–1.4× faster on CPU). The base must be the one it was trained on."""
    descriptor = read_classifier_descriptor(model_dir)
    labels = LabelSet.load(model_dir)
    tokenizer = load_tokenizer(model_dir / TOKENIZER_DIR, max_length=descriptor["max_length"])
    if descriptor["finetune"] == "full":
        model = Qwen3ForSequenceClassification.from_pretrained(
            model_dir / WEIGHTS_DIR, dtype=dtype, local_files_only=True
        )
        return model.eval(), tokenizer, labels, descriptor
    bundled = descriptor["base"].get("bundled")
    base = base_dir or (model_dir / bundled if bundled else Path(descriptor["base"]["path"]))
    _check_base_dir(base)
    if base_fingerprint(base) != descriptor["base"]["fingerprint"]:
        raise ModelError(
            f"base {base} differs from the one {model_dir} was trained on "
            f"(fingerprint {base_fingerprint(base)} != {descriptor['base']['fingerprint']})"
        )
    model = load_base_classifier(base, len(labels), pad_token_id=tokenizer.pad_token_id, dtype=dtype)
    model = PeftModel.from_pretrained(model, model_dir / ADAPTER_DIR)
    if merge:
        model = model.merge_and_unload()
    return model.eval(), tokenizer, labels, descriptor
