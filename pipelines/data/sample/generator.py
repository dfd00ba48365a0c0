"""A realistic, deterministic sample ticket archive with a manifest of its ground truth.

The world: tenants (string ids) own services; ticket volume is long-tailed (Zipf-like);
ownership of some services moves on given days; new tenants appear mid-range with new
services; a few percent of labels are noise; recent tickets are often unresolved; alert
storms burst near-duplicates. ``_manifest.json`` records all of it so tests and the demo can
check learning against the truth; its leading ``_`` marks it as metadata (the Parquet convention),
so ``pyarrow.dataset``, Spark and DuckDB read the archive root as a hive-partitioned dataset.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.contract.archive import PARTITION_KEY, partition_dir
from pipelines.contract.rows import TICKET_SCHEMA
from pipelines.contract.storage import ObjectStore, is_remote
from pipelines.data.sample import vocab as vocab
from pipelines.errors import ArchiveError

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
# Archives generated before the rename: still read, and replaced by --overwrite.
LEGACY_MANIFEST_NAME = "manifest.json"
MAX_SERVICES_PER_TENANT = 10


@dataclass(frozen=True)
class SampleSpec:
    """What to generate. The same spec always yields byte-identical tickets."""

    days: int = 30
    tickets_per_day: int = 2000
    tenants: int = 268
    start: dt.date = dt.date(2026, 10, 1)
    seed: int = 0
    new_tenants: int = 3
    moves: int = 6
    label_noise: float = 0.03
    unresolved: float = 0.03
    storms_per_day: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.days < 1:
            problems.append("days must be >= 1")
        if self.tickets_per_day < 1:
            problems.append("tickets_per_day must be >= 1")
        if self.tenants < 2:
            problems.append("tenants must be >= 2")
        if self.new_tenants < 0 or self.moves < 0:
            problems.append("new_tenants and moves must be >= 0")
        if not 0 <= self.label_noise < 0.5 or not 0 <= self.unresolved < 1:
            problems.append("label_noise must be in [0, 0.5) and unresolved in [0, 1)")
        if problems:
            raise ArchiveError("invalid sample spec: " + "; ".join(problems))

    @property
    def end(self) -> dt.date:
        return self.start + dt.timedelta(days=self.days - 1)


@dataclass
class Tenant:
    tenant_id: str
    services: list[str]
    weight: float
    clusters: list[str]
    introduced: dt.date | None = None  # None: present from the first day


@dataclass(frozen=True)
class OwnershipMove:
    service: str
    from_tenant: str
    to_tenant: str
    day: dt.date


@dataclass
class World:
    tenants: list[Tenant]
    moves: list[OwnershipMove]
    service_weight: dict[str, float] = field(default_factory=dict)
    service_role: dict[str, str] = field(default_factory=dict)

    def owner_on(self, service: str, day: dt.date, initial_owner: dict[str, str]) -> str:
        owner = initial_owner[service]
        for move in self.moves:
            if move.service == service and day >= move.day:
                owner = move.to_tenant
        return owner


def generate_archive(spec: SampleSpec, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``<out>/date=YYYY-MM-DD/part-0.parquet`` for every day and ``_manifest.json``.

    Refuses to write into a directory holding other data unless ``overwrite`` is set; then
    only earlier partitions and the manifest are replaced.
    """
    _prepare_output(out, overwrite)
    rng = random.Random(spec.seed)
    world = _build_world(spec, rng)
    initial_owner = {s: t.tenant_id for t in world.tenants for s in t.services}
    per_day: dict[str, int] = {}
    labelled = Counter[str]()
    for offset in range(spec.days):
        day = spec.start + dt.timedelta(days=offset)
        rows = _tickets_for_day(spec, world, initial_owner, day, rng)
        table = pa.Table.from_pylist(rows, schema=TICKET_SCHEMA)
        day_dir = Path(partition_dir(str(out), day))
        day_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, day_dir / "part-0.parquet")
        per_day[day.isoformat()] = len(rows)
        labelled.update(row["tenant"] for row in rows if row["tenant"] is not None)
        log.info("wrote %s: %d tickets", day_dir, len(rows))
    manifest = _manifest(spec, world, per_day, labelled)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def generate_archive_at(
    spec: SampleSpec, uri: str, store: ObjectStore | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """:func:`generate_archive` at a local path or an object-store URI (``s3://bucket/archive``:
    written in a local staging directory, then copied file by file)."""
    if not is_remote(uri):
        return generate_archive(spec, Path(uri.removeprefix("file://")), overwrite=overwrite)
    filesystem, root = (store or ObjectStore()).resolve(uri)
    if filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True)) and not overwrite:
        raise ArchiveError(f"{uri} is not empty: pass --overwrite to replace a sample archive there")
    with tempfile.TemporaryDirectory(prefix="oncall-sample-") as staging:
        manifest = generate_archive(spec, Path(staging), overwrite=overwrite)
        pafs.copy_files(staging, root, destination_filesystem=filesystem)
    log.info("copied the sample archive to %s", uri)
    return manifest


def find_manifest(archive: Path) -> Path | None:
    """The manifest of a generated sample archive (either name), or None."""
    for name in (MANIFEST_NAME, LEGACY_MANIFEST_NAME):
        if (archive / name).is_file():
            return archive / name
    return None


def read_manifest(archive: Path) -> dict[str, Any]:
    path = find_manifest(archive)
    if path is None:
        raise ArchiveError(
            f"{archive / MANIFEST_NAME} does not exist: is {archive} a generated sample archive?"
        )
    return json.loads(path.read_text())


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in out.iterdir() if not p.name.startswith(".")]
    if not existing:
        return
    manifests = (MANIFEST_NAME, LEGACY_MANIFEST_NAME)
    ours = [p for p in existing if p.name in manifests or p.name.startswith(f"{PARTITION_KEY}=")]
    if not overwrite or len(ours) != len(existing):
        raise ArchiveError(
            f"{out} is not empty; choose an empty directory"
            + (
                " or pass --overwrite to replace an earlier sample archive"
                if len(ours) == len(existing)
                else ""
            )
        )
    for path in ours:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _build_world(spec: SampleSpec, rng: random.Random) -> World:
    total_tenants = spec.tenants + spec.new_tenants
    ids = [str(i) for i in rng.sample(range(10000, 99999), total_tenants)]
    names = [f"{d}-{r}" for d in vocab.SERVICE_DOMAINS for r in vocab.SERVICE_ROLES]
    rng.shuffle(names)
    service_counts = [min(MAX_SERVICES_PER_TENANT, 1 + _geometric(rng, 0.38)) for _ in ids]
    needed = sum(service_counts)
    while len(names) < needed:  # very large --tenants: number the names
        names += [f"{n}-{len(names) // len(vocab.SERVICE_ROLES)}" for n in names[: needed - len(names)]]
    cluster_names = [c for c, _ in vocab.CLUSTERS]
    ranks = list(range(1, spec.tenants + 1))
    rng.shuffle(ranks)
    tenants: list[Tenant] = []
    cursor = 0
    for index, (tenant_id, count) in enumerate(zip(ids, service_counts, strict=True)):
        services = names[cursor : cursor + count]
        cursor += count
        is_new = index >= spec.tenants
        # New tenants arrive with a healthy volume so they can be learned from a few days.
        weight = 1.0 / (rng.randint(5, 25) if is_new else ranks[index]) ** 1.05
        introduced = None
        if is_new:
            lo, hi = spec.days // 2, max(spec.days // 2, spec.days - 3)
            introduced = spec.start + dt.timedelta(days=rng.randint(lo, hi))
        tenants.append(
            Tenant(tenant_id, services, weight, rng.sample(cluster_names, rng.randint(1, 3)), introduced)
        )
    world = World(tenants=tenants, moves=_plan_moves(spec, tenants[: spec.tenants], rng))
    for tenant in tenants:
        shares = [rng.random() + 0.2 for _ in tenant.services]
        for service, share in zip(tenant.services, shares, strict=True):
            world.service_weight[service] = tenant.weight * share / sum(shares)
            world.service_role[service] = service.split("-")[1]
    return world


def _plan_moves(spec: SampleSpec, tenants: list[Tenant], rng: random.Random) -> list[OwnershipMove]:
    """Services of busy tenants move to another tenant on a day in the second half or so."""
    busiest = sorted(tenants, key=lambda t: -t.weight)[: max(4, len(tenants) // 5)]
    candidates = [(t, s) for t in busiest for s in t.services]
    moves: list[OwnershipMove] = []
    moved: set[str] = set()
    lo, hi = max(1, spec.days // 3), max(1, spec.days - 3)
    for tenant, service in rng.sample(candidates, min(spec.moves, len(candidates))):
        if service in moved:
            continue
        target = rng.choice([t for t in busiest if t is not tenant])
        day = spec.start + dt.timedelta(days=rng.randint(lo, max(lo, hi)))
        moves.append(OwnershipMove(service, tenant.tenant_id, target.tenant_id, day))
        moved.add(service)
    return sorted(moves, key=lambda m: (m.day, m.service))


def _geometric(rng: random.Random, p: float) -> int:
    count = 0
    while rng.random() > p:
        count += 1
    return count


def _weighted(rng: random.Random, pairs: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([v for v, _ in pairs], weights=[w for _, w in pairs])[0]


def _tickets_for_day(
    spec: SampleSpec, world: World, initial_owner: dict[str, str], day: dt.date, rng: random.Random
) -> list[dict[str, Any]]:
    active = [t for t in world.tenants if t.introduced is None or t.introduced <= day]
    services = [s for t in active for s in t.services]
    weights = [world.service_weight[s] for s in services]
    clusters_of = {s: t.clusters for t in active for s in t.services}
    all_tenants = [t.tenant_id for t in active]
    owners = {s: world.owner_on(s, day, initial_owner) for s in services}
    days_before_end = (spec.end - day).days
    unresolved = spec.unresolved + (0.3 if days_before_end == 0 else 0.1 if days_before_end == 1 else 0.0)

    drafts: list[dict[str, Any]] = []
    storms = _poisson(rng, spec.storms_per_day)
    for _ in range(storms):
        if len(drafts) >= spec.tickets_per_day // 4:
            break
        service = rng.choices(services, weights=weights)[0]
        size = min(rng.randint(8, 60), spec.tickets_per_day // 4 - len(drafts))
        storm = _draft(rng, world, service, clusters_of[service], storm=True)
        start_second = rng.randint(0, 86_000 - 600)
        for i in range(size):
            echo = dict(storm)
            echo["numbers_seed"] = rng.random()
            echo["second"] = start_second + rng.randint(0, 600) + i
            drafts.append(echo)
    while len(drafts) < spec.tickets_per_day:
        service = rng.choices(services, weights=weights)[0]
        drafts.append(_draft(rng, world, service, clusters_of[service], storm=False))

    rows = []
    for seq, draft in enumerate(sorted(drafts, key=lambda d: d["second"])):
        tenant: str | None = owners[draft["service"]]
        if rng.random() < spec.label_noise:
            tenant = rng.choice(all_tenants)
        if rng.random() < unresolved:
            tenant = None
        rows.append(_render(draft, day, seq, tenant))
    return rows


def _poisson(rng: random.Random, mean: float) -> int:
    count, threshold, product = 0, pow(2.718281828459045, -mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def _draft(
    rng: random.Random, world: World, service: str, clusters: list[str], *, storm: bool
) -> dict[str, Any]:
    """The random choices of one ticket; numbers are filled in later from ``numbers_seed``."""
    role_categories = vocab.ROLE_CATEGORIES.get(world.service_role[service])
    if role_categories and rng.random() < 0.7:
        category = rng.choice(role_categories)
    else:
        category = rng.choice(list(vocab.CATEGORIES))
    language = _weighted(rng, vocab.LANGUAGE_WEIGHTS)
    source = "alertmanager" if storm else _weighted(rng, vocab.SOURCES)
    if category == "user_report" and not storm:
        source = rng.choice(("user-report", "email", "slack"))
    cluster = rng.choice(clusters) if rng.random() < 0.85 else rng.choice(vocab.CLUSTERS)[0]
    templates = vocab.CATEGORIES[category]
    return {
        "service": service,
        "category": category,
        "title_template": rng.choice(templates[language]),
        "desc_templates": rng.sample(templates["desc"], k=min(len(templates["desc"]), rng.randint(1, 2))),
        "log_lines": rng.randint(4, 40) if rng.random() < 0.06 else rng.randint(0, 2),
        "note": rng.choice(vocab.NOTES),
        "cluster": cluster,
        "source": source,
        "severity": "P2" if storm else _weighted(rng, vocab.SEVERITIES),
        "show_service": rng.random() < 0.88,
        "show_cluster": rng.random() < 0.9,
        "show_description": rng.random() < 0.93,
        "numbers_seed": rng.random(),
        "second": int(rng.triangular(0, 86_399, 52_000)),  # busier in the (UTC) afternoon
    }


def _render(draft: dict[str, Any], day: dt.date, seq: int, tenant: str | None) -> dict[str, Any]:
    numbers = random.Random(draft["numbers_seed"])
    service = draft["service"]
    cluster = draft["cluster"]
    region = dict(vocab.CLUSTERS)[cluster]
    domain = service.split("-")[0]
    values = {
        # Without the service column, the text still names the service most of the time.
        "svc": service if draft["show_service"] or numbers.random() < 0.6 else f"{domain} service",
        "cluster": cluster,
        "region": region,
        "host": f"{cluster}-node-{numbers.randint(1, 400):03d}",
        "pod": f"{service}-{numbers.getrandbits(32):08x}"[:40],
        "n": numbers.randint(2, 50_000),
        "pct": numbers.randint(5, 99),
        "ms": numbers.choice((180, 250, 400, 800, 1200, 2500, 5000)),
        "code": numbers.choice(vocab.HTTP_CODES),
        "err": numbers.choice(vocab.ERROR_NAMES),
        "topic": f"{domain}.{numbers.choice(('events', 'orders', 'audit', 'cdc', 'logs'))}",
        "db": f"{domain}_{numbers.choice(('db', 'mysql', 'pg', 'tidb'))}",
        "table": numbers.choice(vocab.TABLES),
        "days": numbers.randint(1, 14),
        "ver": f"v{numbers.randint(1, 9)}.{numbers.randint(0, 40)}.{numbers.randint(0, 20)}",
        "user": f"{numbers.choice(vocab.USER_NAMES)}{numbers.randint(1, 999)}",
        "path": numbers.choice(vocab.URL_PATHS),
    }
    description = None
    if draft["show_description"]:
        parts = [t.format(**values) for t in draft["desc_templates"]]
        parts += [
            numbers.choice(vocab.LOG_LINES).format(**{**values, "n": numbers.randint(1, 9999)})
            for _ in range(draft["log_lines"])
        ]
        parts.append(draft["note"])
        description = "\n".join(p for p in parts if p)
    created = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(seconds=draft["second"])
    return {
        "ticket_id": f"INC-{day:%Y%m%d}-{seq:05d}",
        "created_at": created,
        "title": draft["title_template"].format(**values),
        "description": description,
        "service": service if draft["show_service"] else None,
        "cluster": cluster if draft["show_cluster"] else None,
        "region": region if draft["show_cluster"] else None,
        "source": draft["source"],
        "severity": draft["severity"],
        "tenant": tenant,
    }


def _manifest(
    spec: SampleSpec, world: World, per_day: dict[str, int], labelled: Counter[str]
) -> dict[str, Any]:
    spec_dict = asdict(spec)
    spec_dict["start"] = spec.start.isoformat()
    return {
        "spec": spec_dict,
        "start": spec.start.isoformat(),
        "end": spec.end.isoformat(),
        "tickets": sum(per_day.values()),
        "tickets_per_day": per_day,
        "tenants": [
            {
                "tenant": t.tenant_id,
                "services": t.services,
                "introduced": t.introduced.isoformat() if t.introduced else None,
                "labelled_tickets": labelled.get(t.tenant_id, 0),
            }
            for t in world.tenants
        ],
        "ownership_moves": [
            {"service": m.service, "from": m.from_tenant, "to": m.to_tenant, "date": m.day.isoformat()}
            for m in world.moves
        ],
        "new_tenants": [
            {"tenant": t.tenant_id, "services": t.services, "date": t.introduced.isoformat()}
            for t in world.tenants
            if t.introduced is not None
        ],
    }
