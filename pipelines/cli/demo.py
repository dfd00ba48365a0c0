"""The main job end to end on the embedded default:

sample archive → tiny base → first training (days 1–20) → champion v1 → Serve up → route
tickets over HTTP → the next days "arrive" (a new tenant, services that changed owner) →
``nightly`` → the new champion is hot-swapped into the running Serve → the same tickets routed
again → rescoring of the archive → summary.

Re-runs reuse what exists: the archive and base when built with the same settings, the first
champion, and the nightly run of the last day (a finished date is a no-op).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import OncallConfig
from pipelines.contract.archive import Archive
from pipelines.contract.columns import LABEL_COLUMN, TEXT_COLUMNS
from pipelines.data.sample.generator import SampleSpec, find_manifest, generate_archive, read_manifest
from pipelines.errors import ModelError
from pipelines.inference.rescore import RescoreRequest, rescore
from pipelines.inference.summary import RescoreSummary
from pipelines.jobs.nightly import NightlyRequest, NightlySummary, run_nightly
from pipelines.model.base import BASE_DESCRIPTOR
from pipelines.ray_runtime import ray_session, serve_environment
from pipelines.registry.promotion import Decision, promote
from pipelines.registry.versions import CHAMPION, Registry, VersionRef
from pipelines.training.init_base import init_base
from pipelines.training.job import TrainRequest, TrainResult, train

log = logging.getLogger(__name__)

DEMO_PRESET = "tiny"
# 30 days × 400 tickets, 80 tenants: big enough to be a real routing problem, small enough
# to train on 2 CPU cores in a couple of minutes.
DEMO_SPEC = SampleSpec(days=30, tickets_per_day=400, tenants=80, new_tenants=3, moves=6)
DEMO_TRAIN_DAYS = 20
SHOWN_PER_KIND = 3
HOT_SWAP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ShownTicket:
    """A held-out ticket routed over HTTP before and after the nightly run."""

    ticket: dict[str, Any]
    kind: str  # "new tenant", "moved service" or "stable"
    owner: str
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class DemoResult:
    archive: Path
    base: Path
    manifest: dict[str, Any]
    first_champion: str
    training: TrainResult | None  # None when an earlier run's champion was reused
    decision: Decision | None
    endpoint: str
    nightly: NightlySummary
    shown: list[ShownTicket]
    hot_swap_seconds: float
    rescore: RescoreSummary


def ensure_sample_archive(archive: Path, spec: SampleSpec) -> tuple[dict[str, Any], bool]:
    """The manifest of the sample archive for ``spec`` at ``archive`` and whether it was
    (re)generated now rather than reused from an earlier run."""
    if find_manifest(archive) is not None:
        manifest = read_manifest(archive)
        if manifest.get("spec") == {**asdict(spec), "start": spec.start.isoformat()}:
            log.info("reusing the sample archive at %s", archive)
            return manifest, False
    log.info("generating the sample archive at %s", archive)
    return generate_archive(spec, archive, overwrite=True), True


def run_demo(config: OncallConfig, spec: SampleSpec = DEMO_SPEC) -> DemoResult:
    with ray_session(config, serve_environment(config.serve)):  # one local Ray for every step
        return _run_demo(config, spec)


def _run_demo(config: OncallConfig, spec: SampleSpec) -> DemoResult:
    from ray import serve

    from serve.app import deploy  # the demo is an entry point: it composes pipelines and serve

    archive = Path(config.archive_uri)
    manifest, regenerated = ensure_sample_archive(archive, spec)
    base = _ensure_base(config, archive, regenerated)
    first_until = spec.start + dt.timedelta(days=min(DEMO_TRAIN_DAYS, spec.days) - 1)
    champion, training, decision = _first_champion(config, archive, base, spec.start, first_until)
    last_day = spec.start + dt.timedelta(days=spec.days - 1)
    shown_rows = _changed_tickets(config, archive, manifest, champion, last_day)

    url = deploy(config)
    try:
        client = _client(config, url)
        client.wait_ready(timeout_s=120)
        before = client.route_batch(_as_tickets(shown_rows))
        nightly = run_nightly(config, NightlyRequest(date=last_day, archive_uri=str(archive)))
        started = time.monotonic()
        _wait_for_version(client, nightly.champion_after or champion.version)
        hot_swap_seconds = time.monotonic() - started
        after = client.route_batch(_as_tickets(shown_rows))
    finally:
        serve.shutdown()
    shown = [
        ShownTicket(ticket, row["kind"], row[LABEL_COLUMN], first, second)
        for ticket, row, first, second in zip(
            _as_tickets(shown_rows), shown_rows.to_dict("records"), before, after, strict=True
        )
    ]
    rescored = rescore(config, RescoreRequest(archive_uri=str(archive), alias=CHAMPION))
    return DemoResult(
        archive=archive,
        base=base,
        manifest=manifest,
        first_champion=champion.version,
        training=training,
        decision=decision,
        endpoint=url,
        nightly=nightly,
        shown=shown,
        hot_swap_seconds=hot_swap_seconds,
        rescore=rescored,
    )


def _ensure_base(config: OncallConfig, archive: Path, regenerated: bool) -> Path:
    base = config.preset_bases_dir / DEMO_PRESET
    if (base / BASE_DESCRIPTOR).is_file() and not regenerated:
        log.info("reusing the %s base at %s", DEMO_PRESET, base)
        return base
    return init_base(
        DEMO_PRESET,
        str(archive),
        base,
        config.data.text_builder(),
        vocab_size=config.model.tokenizer_vocab_size,
        max_length=config.model.max_length,
        overwrite=True,
    )


def _first_champion(
    config: OncallConfig, archive: Path, base: Path, since: dt.date, until: dt.date
) -> tuple[VersionRef, TrainResult | None, Decision | None]:
    """The champion before any nightly run: trained on the first days, or an earlier demo's."""
    registry = Registry(config)
    first = registry.alias_or_none(CHAMPION)
    if first is not None:
        while first.gate is not None and first.gate.champion:  # back to where the nightly runs started
            first = registry.get(version=first.gate.champion)
        log.info("reusing version %s from an earlier run as the first champion", first.version)
        return first, None, None
    log.info("training on %s … %s", since, until)
    training = train(config, TrainRequest(archive_uri=str(archive), base_dir=base, since=since, until=until))
    decision = promote(config, training.version)
    if not decision.promoted:
        raise RuntimeError(f"the first version was not promoted: {decision.reasons}")
    return registry.get(alias=CHAMPION), training, decision


def _changed_tickets(
    config: OncallConfig, archive: Path, manifest: dict[str, Any], first: VersionRef, last_day: dt.date
) -> pd.DataFrame:
    """Held-out tickets of the last test days whose owner the first champion cannot know (a new
    tenant, a service that moved) and the nightly run can learn, plus a few stable ones."""
    window = first.train_window
    if window is None:
        raise ModelError(f"version {first.version} records no training days (tag window.train)")
    trained_until = window.last
    held_out = config.data.test_days
    learnable_until = last_day - dt.timedelta(days=held_out + config.data.validation_days)

    def learnable(change: dict[str, Any]) -> bool:
        return trained_until < dt.date.fromisoformat(change["date"]) <= learnable_until

    tickets = Archive(str(archive))
    days = tickets.partitions(last_day - dt.timedelta(days=held_out - 1), last_day)
    rows = pd.concat(
        [tickets.read_file(path).to_pandas() for day in days for path in day.files],
        ignore_index=True,
    ).dropna(subset=[LABEL_COLUMN])
    new_tenants = {t["tenant"] for t in manifest["new_tenants"] if learnable(t)}
    moved = {(m["service"], m["to"]) for m in manifest["ownership_moves"] if learnable(m)}
    kinds = pd.Series("stable", index=rows.index)
    kinds[rows[LABEL_COLUMN].isin(new_tenants)] = "new tenant"
    kinds[[(s, t) in moved for s, t in zip(rows.service, rows[LABEL_COLUMN], strict=True)]] = "moved service"
    rows = rows.assign(kind=kinds)
    picked = [
        rows[rows.kind == kind].head(SHOWN_PER_KIND if kind != "stable" else 2)
        for kind in ("new tenant", "moved service", "stable")
    ]
    return pd.concat(picked, ignore_index=True)


def _as_tickets(rows: pd.DataFrame) -> list[dict[str, Any]]:
    fields = ["ticket_id", *TEXT_COLUMNS]
    return [
        {name: row[name] for name in fields if isinstance(row[name], str)} for row in rows.to_dict("records")
    ]


def _client(config: OncallConfig, url: str) -> Any:
    from serve.client import RouterClient

    tokens = config.serve.tokens()  # auth_tokens, then auth_tokens_file
    return RouterClient(url, token=tokens[0] if tokens else None)


def _wait_for_version(client: Any, version: str) -> None:
    """Until the running endpoint answers with ``version`` (replicas poll the alias)."""
    deadline = time.monotonic() + HOT_SWAP_TIMEOUT_S
    while client.model()["version"] != version:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the endpoint did not switch to version {version} in {HOT_SWAP_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.5)
