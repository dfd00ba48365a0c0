"""The main job on the embedded default: sample archive → tiny base → training run →
registered version → promotion gate (the first version becomes champion when it beats the
majority-class baseline).

The archive and base are reused when an earlier run built them with the same settings; the
first two thirds of the archive's days are trained on, the rest is left for the nightly loop.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.base_builder import init_base
from pipelines.config import OncallConfig
from pipelines.model import BASE_DESCRIPTOR
from pipelines.promotion import Decision, promote
from pipelines.sample_data import MANIFEST_NAME, SampleSpec, generate_archive, read_manifest
from pipelines.schema import TextBuilder
from pipelines.train import TrainRequest, TrainResult, train

log = logging.getLogger(__name__)

DEMO_PRESET = "tiny"
# 30 days × 400 tickets, 80 tenants: big enough to be a real routing problem, small enough
# to train on 2 CPU cores in a couple of minutes.
DEMO_SPEC = SampleSpec(days=30, tickets_per_day=400, tenants=80, new_tenants=3, moves=6)
DEMO_TRAIN_DAYS = 20


@dataclass(frozen=True)
class DemoResult:
    archive: Path
    base: Path
    manifest: dict[str, Any]
    training: TrainResult
    decision: Decision


def ensure_sample_archive(archive: Path, spec: SampleSpec) -> tuple[dict[str, Any], bool]:
    """The manifest of the sample archive for ``spec`` at ``archive`` and whether it was
    (re)generated now rather than reused from an earlier run."""
    if (archive / MANIFEST_NAME).is_file():
        manifest = read_manifest(archive)
        if manifest.get("spec") == {**asdict(spec), "start": spec.start.isoformat()}:
            log.info("reusing the sample archive at %s", archive)
            return manifest, False
    log.info("generating the sample archive at %s", archive)
    return generate_archive(spec, archive, overwrite=True), True


def run_demo(config: OncallConfig, spec: SampleSpec = DEMO_SPEC) -> DemoResult:
    archive = Path(config.archive_uri)
    manifest, regenerated = ensure_sample_archive(archive, spec)
    base = config.preset_bases_dir / DEMO_PRESET
    if (base / BASE_DESCRIPTOR).is_file() and not regenerated:
        log.info("reusing the %s base at %s", DEMO_PRESET, base)
    else:
        init_base(
            DEMO_PRESET,
            str(archive),
            base,
            TextBuilder.from_config(config.data),
            vocab_size=config.model.tokenizer_vocab_size,
            max_length=config.model.max_length,
            overwrite=True,
        )
    until = spec.start + dt.timedelta(days=min(DEMO_TRAIN_DAYS, spec.days) - 1)
    log.info("training on %s … %s", spec.start, until)
    training = train(
        config, TrainRequest(archive_uri=str(archive), base_dir=base, since=spec.start, until=until)
    )
    decision = promote(config, training.version)
    return DemoResult(archive=archive, base=base, manifest=manifest, training=training, decision=decision)
