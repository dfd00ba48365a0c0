"""A benchmark workspace: a generated archive, a random-init base and one registered classifier.

Benchmarks measure speed, not accuracy, so the registered classifier is untrained (random LoRA
and head on a random base): same shapes, same code path, minutes of training saved. Everything
lives under one folder and is reused when present, so repeated runs measure the same thing.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import DataConfig, OncallConfig, load_config
from pipelines.data.sample.generator import SampleSpec, find_manifest, generate_archive, read_manifest
from pipelines.model.artifact import LabelSet, save_classifier
from pipelines.model.base import build_preset_base, load_tokenizer
from pipelines.model.classifier import build_classifier
from pipelines.registry.packaging import CLASSIFIER_ARTIFACT, package_classifier
from pipelines.registry.tracking import MODEL_ARTIFACT, Tracker
from pipelines.registry.versions import CHAMPION, Registry
from pipelines.training.init_base import sample_ticket_texts

log = logging.getLogger(__name__)

# A base about 25× the tiny one in compute: ≥ 20 ms for a single ticket on one core here.
COMPUTE_BOUND_SHAPE: dict[str, Any] = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
}
BASES: dict[str, dict[str, Any]] = {"tiny": {}, "compute-bound": COMPUTE_BOUND_SHAPE}


@dataclass(frozen=True)
class Workspace:
    config: OncallConfig
    archive: Path
    base_dir: Path
    version: str  # the registered version, alias champion

    @property
    def tickets(self) -> int:
        return int(read_manifest(self.archive)["tickets"])


def prepare_workspace(
    root: Path,
    spec: SampleSpec,
    *,
    base: str = "tiny",
    max_length: int = 128,
    overrides: Mapping[str, Any] | None = None,
) -> Workspace:
    """The archive of ``spec``, a ``base`` (a key of BASES) and its champion, under ``root``."""
    if base not in BASES:
        raise ValueError(f"unknown benchmark base {base!r}; choose from {sorted(BASES)}")
    root = root.resolve()
    archive = root / f"archive-{spec.days}x{spec.tickets_per_day}-seed{spec.seed}"
    data_dir = root / f"registry-{base}-{archive.name}"
    config = load_config(
        environ={},
        overrides={"data_dir": data_dir, "data.archive": str(archive), "model.max_length": max_length}
        | dict(overrides or {}),
    )
    if find_manifest(archive) is None:
        log.info("generating %d days × %d tickets under %s", spec.days, spec.tickets_per_day, archive)
        generate_archive(spec, archive, overwrite=True)
    builder = DataConfig().text_builder()
    base_dir = root / "bases" / base
    if not (base_dir / "config.json").is_file():
        texts = sample_ticket_texts(str(archive), builder, max_texts=20_000)
        build_preset_base(
            "tiny",
            texts,
            base_dir,
            vocab_size=config.model.tokenizer_vocab_size,
            max_length=max_length,
            shape=BASES[base],
            overwrite=True,
        )
    registry = Registry(config)
    champion = registry.alias_or_none(CHAMPION)
    version = champion.version if champion else _register_untrained(config, registry, archive, base_dir)
    return Workspace(config, archive, base_dir, version)


def _register_untrained(config: OncallConfig, registry: Registry, archive: Path, base_dir: Path) -> str:
    """Package a random-init classifier over every tenant of the archive and make it champion."""
    labels = LabelSet.from_tenants(t["tenant"] for t in read_manifest(archive)["tenants"])
    tokenizer = load_tokenizer(base_dir, max_length=config.model.max_length)
    model = build_classifier(
        base_dir, len(labels), pad_token_id=tokenizer.pad_token_id, model_config=config.model
    )
    with (
        Tracker(config).run("benchmarks") as run,
        tempfile.TemporaryDirectory(prefix="oncall-bench-") as staging,
    ):
        model_dir = save_classifier(
            model,
            tokenizer,
            labels,
            Path(staging) / CLASSIFIER_ARTIFACT,
            base_dir=base_dir,
            text=config.data.text_builder().settings(),
            max_length=config.model.max_length,
        )
        packaged = package_classifier(model_dir, Path(staging) / MODEL_ARTIFACT)
        run.artifacts(packaged, MODEL_ARTIFACT)
    version = registry.register_run(run.run_id, alias=CHAMPION).version
    log.info("registered untrained classifier (%d tenants) as version %s (champion)", len(labels), version)
    return version
