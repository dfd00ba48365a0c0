"""The main job on the embedded default: sample archive → tiny base → training run →
registered version → promotion gate (the first version becomes champion when it beats the
majority-class baseline) → the routing endpoint answers a few held-out tickets over HTTP →
rescoring of the whole sample archive with the champion.

The archive and base are reused when an earlier run built them with the same settings; the
first two thirds of the archive's days are trained on, the rest is left for the nightly loop.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.archive import list_partitions, read_partition_file, resolve
from pipelines.base_builder import init_base
from pipelines.config import OncallConfig
from pipelines.model import BASE_DESCRIPTOR
from pipelines.promotion import Decision, promote
from pipelines.ray_runtime import ray_session
from pipelines.registry import CHAMPION, Registry
from pipelines.rescore import RescoreRequest, RescoreSummary, rescore
from pipelines.sample_data import MANIFEST_NAME, SampleSpec, generate_archive, read_manifest
from pipelines.schema import LABEL_COLUMN, TEXT_COLUMNS, TextBuilder
from pipelines.train import TrainRequest, TrainResult, train

log = logging.getLogger(__name__)

DEMO_PRESET = "tiny"
# 30 days × 400 tickets, 80 tenants: big enough to be a real routing problem, small enough
# to train on 2 CPU cores in a couple of minutes.
DEMO_SPEC = SampleSpec(days=30, tickets_per_day=400, tenants=80, new_tenants=3, moves=6)
DEMO_TRAIN_DAYS = 20
DEMO_ROUTED_TICKETS = 6


@dataclass(frozen=True)
class DemoResult:
    archive: Path
    base: Path
    manifest: dict[str, Any]
    training: TrainResult
    decision: Decision
    rescore: RescoreSummary | None = None  # None when no version is champion
    endpoint: str = ""
    routed: list[RoutedTicket] = field(default_factory=list)  # empty when no version is champion


@dataclass(frozen=True)
class RoutedTicket:
    """A held-out ticket, its owner in the archive, and what the endpoint answered over HTTP."""

    ticket: dict[str, Any]
    owner: str
    answer: dict[str, Any]


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
    with ray_session():  # one local Ray for every step
        return _run_demo(config, spec)


def _run_demo(config: OncallConfig, spec: SampleSpec) -> DemoResult:
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
    champion = Registry(config).alias_or_none(CHAMPION)
    endpoint, routed = (
        route_over_http(config, archive, until + dt.timedelta(days=1)) if champion else ("", [])
    )
    rescored = (
        rescore(config, RescoreRequest(archive_uri=str(archive), version=champion.version))
        if champion
        else None
    )
    return DemoResult(
        archive=archive,
        base=base,
        manifest=manifest,
        training=training,
        decision=decision,
        rescore=rescored,
        endpoint=endpoint,
        routed=routed,
    )


def route_over_http(config: OncallConfig, archive: Path, day: dt.date) -> tuple[str, list[RoutedTicket]]:
    """Start the routing endpoint, route a few tickets of ``day`` (not trained on) over HTTP,
    and stop it again."""
    from ray import serve

    from serve.app import deploy  # the demo is an entry point: it composes pipelines and serve
    from serve.client import RouterClient

    tickets = read_partition_file(
        list_partitions(str(archive), day, day)[0].files[0], resolve(str(archive))[0]
    )
    rows = tickets.to_pandas().dropna(subset=[LABEL_COLUMN]).head(DEMO_ROUTED_TICKETS)
    fields = ["ticket_id", *TEXT_COLUMNS]
    url = deploy(config)
    try:
        client = RouterClient(url, token=config.serve.auth_tokens[0] if config.serve.auth_tokens else None)
        routed = []
        for row in rows.to_dict("records"):
            ticket = {name: row[name] for name in fields if isinstance(row[name], str)}
            routed.append(RoutedTicket(ticket, row[LABEL_COLUMN], client.route(ticket)))
        return url, routed
    finally:
        serve.shutdown()
