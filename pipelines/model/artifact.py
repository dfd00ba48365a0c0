"""The tenant label set of a classifier: an ordered list whose positions are the class ids.

Ids are stable: extending the set appends new tenants and never renumbers known ones, so a
head can grow (new rows) while existing rows keep their meaning.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    PreTrainedTokenizerBase,
    Qwen3ForSequenceClassification,
)

from pipelines.errors import ModelError
from pipelines.model.base import BASE_DESCRIPTOR, _check_base_dir, base_fingerprint, load_tokenizer
from pipelines.model.classifier import load_base_classifier

# A saved classifier directory (see save_classifier).
CLASSIFIER_DESCRIPTOR = "classifier.json"
ADAPTER_DIR = "adapter"
WEIGHTS_DIR = "weights"
TOKENIZER_DIR = "tokenizer"
BUNDLED_BASE_DIR = "base"


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


LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class LabelSet:
    tenants: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.tenants)) != len(self.tenants):
            raise ModelError("labels: a tenant is listed twice")

    @classmethod
    def from_tenants(cls, tenants: Iterable[str]) -> LabelSet:
        """A new label set, sorted so the same tenants always get the same ids."""
        return cls(tuple(sorted(set(tenants))))

    def extended(self, tenants: Iterable[str]) -> LabelSet:
        """This set plus the tenants it does not know yet, appended in sorted order."""
        known = set(self.tenants)
        return LabelSet(self.tenants + tuple(sorted({t for t in tenants if t not in known})))

    def __len__(self) -> int:
        return len(self.tenants)

    def id_of(self) -> dict[str, int]:
        return {tenant: index for index, tenant in enumerate(self.tenants)}

    def save(self, directory: Path) -> Path:
        path = directory / LABELS_FILE
        path.write_text(json.dumps({"tenants": list(self.tenants)}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> LabelSet:
        path = directory / LABELS_FILE
        try:
            tenants = json.loads(path.read_text())["tenants"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: not a readable labels file ({exc})") from None
        if not all(isinstance(t, str) for t in tenants):
            raise ModelError(f"{path}: tenant ids must be strings")
        return cls(tuple(tenants))
