"""The tiny base round trip, and the real Qwen3-0.6B shape through the same loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

from pipelines.contract.text import TextBuilder
from pipelines.errors import ModelError
from pipelines.model.base import BASE_DESCRIPTOR, load_tokenizer, preset_config
from pipelines.model.classifier import load_base_classifier
from pipelines.training.init_base import init_base

MIXED = "title: payment-gateway 在集群 sg1 出现大量 timeout | cluster: sg1"


def test_tiny_base_is_a_standard_offline_hugging_face_directory(tiny_base: Path) -> None:
    config = AutoConfig.from_pretrained(tiny_base, local_files_only=True)
    assert config.model_type == "qwen3" and config.num_key_value_heads < config.num_attention_heads  # GQA
    tokenizer = AutoTokenizer.from_pretrained(tiny_base, local_files_only=True)
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id == config.pad_token_id
    assert len(tokenizer) == config.vocab_size == 2000
    ids = tokenizer(MIXED)["input_ids"]
    assert tokenizer.decode(ids) == MIXED  # byte-level: Chinese and English round-trip exactly
    assert len(ids) < len(MIXED.encode())  # BPE merges learned from the ticket text
    assert json.loads((tiny_base / BASE_DESCRIPTOR).read_text())["preset"] == "tiny"


def test_classifier_logits_do_not_depend_on_padding(tiny_base: Path) -> None:
    tokenizer = load_tokenizer(tiny_base, max_length=128)
    model = load_base_classifier(tiny_base, num_labels=5, pad_token_id=tokenizer.pad_token_id).eval()
    texts = [MIXED, "title: disk full", "title: " + "很长的描述 " * 40]
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] <= 128
    with torch.inference_mode():
        batched = model(**batch).logits
        alone = torch.cat(
            [model(**tokenizer([t], truncation=True, return_tensors="pt")).logits for t in texts]
        )
    assert batched.shape == (3, 5)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)  # last non-pad token pooled


def test_rebuild_needs_overwrite(
    tiny_base: Path, small_archive: tuple[Path, dict], text_builder: TextBuilder
) -> None:
    with pytest.raises(ModelError, match="--overwrite"):
        init_base("tiny", str(small_archive[0]), tiny_base, text_builder, vocab_size=2000, max_length=128)


def test_missing_or_foreign_base_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(ModelError, match=r"no config\.json.*init-base"):
        load_base_classifier(tmp_path, 3, pad_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="expected 'qwen3'"):
        load_base_classifier(tmp_path, 3, pad_token_id=0)
    with pytest.raises(ModelError, match="unknown base preset"):
        preset_config("huge")


def test_real_qwen3_0_6b_shape_loads_through_the_same_loader(tmp_path: Path, tiny_base: Path) -> None:
    """Random weights in the published shape (no download), saved and loaded like a checkpoint."""
    config = preset_config("qwen3-0.6b", pad_token_id=0, dtype="bfloat16")
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim) == (28, 1024, 128)
    assert (config.num_attention_heads, config.num_key_value_heads) == (16, 8)
    torch.manual_seed(0)
    with torch.device("cpu"):
        Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tiny_base)  # any tokenizer whose ids fit the vocabulary
    tokenizer.save_pretrained(tmp_path)
    model = load_base_classifier(tmp_path, 268, pad_token_id=tokenizer.pad_token_id, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    assert 590e6 < parameters < 600e6
    batch = tokenizer([MIXED, "title: disk full"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model.eval()(**batch).logits
    assert logits.shape == (2, 268)
    assert torch.isfinite(logits).all()


def test_init_base_command(tmp_path: Path, small_archive: tuple[Path, dict]) -> None:
    out = tmp_path / "base"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipelines.cli import main; main()",
            "--data-dir",
            str(tmp_path),
            "init-base",
            "--archive",
            str(small_archive[0]),
            "--out",
            str(out),
            "--vocab-size",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"base: {out}" in done.stdout
    assert AutoConfig.from_pretrained(out, local_files_only=True).vocab_size == 1000
