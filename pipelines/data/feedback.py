"""Routing feedback: the tenant that really owns a ticket, as told by a person or a tool.

In any SQL database SQLAlchemy speaks: SQLite under the data dir by default, PostgreSQL in
production. The Serve endpoint writes it, the nightly pipeline reads it as labels that override
the archive's. Two tables:

- ``routing_feedback_history``: every answer, append-only (ticket, tenant, source, token id, time);
- ``routing_feedback``: the current answer per ticket (the latest wins), the table of earlier
  releases, still written so that older readers keep working. Its rows written before the
  history existed are read as history too (:meth:`FeedbackStore.history`): nothing to migrate.

The nightly does not take every answer as truth (:func:`accepted_labels`): a tenant the champion
does not know (a typo, a team that does not exist) would grow the model's head. Per
``feedback.new_tenants``, such answers are rejected, accepted, or held out of training until
``feedback.confirmations`` distinct tickets or a second source name the same tenant.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine

from pipelines.config import FeedbackConfig
from pipelines.contract.archive import Archive
from pipelines.contract.columns import LABEL_COLUMN
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

MAX_TICKET_ID_CHARS = 256
MAX_TENANT_CHARS = 256
MAX_SOURCE_CHARS = 128
MAX_TOKEN_ID_CHARS = 128
SQLITE_BUSY_TIMEOUT_S = 30

_metadata = sa.MetaData()
FEEDBACK_TABLE = sa.Table(
    "routing_feedback",
    _metadata,
    sa.Column("ticket_id", sa.String(MAX_TICKET_ID_CHARS), primary_key=True),
    sa.Column("tenant", sa.String(MAX_TENANT_CHARS), nullable=False),
    sa.Column("source", sa.String(MAX_SOURCE_CHARS), nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
HISTORY_TABLE = sa.Table(
    "routing_feedback_history",
    _metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("ticket_id", sa.String(MAX_TICKET_ID_CHARS), nullable=False, index=True),
    sa.Column("tenant", sa.String(MAX_TENANT_CHARS), nullable=False),
    sa.Column("source", sa.String(MAX_SOURCE_CHARS), nullable=True),
    sa.Column("token_id", sa.String(MAX_TOKEN_ID_CHARS), nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
HISTORY_COLUMNS = ["ticket_id", "tenant", "source", "token_id", "received_at"]
# Upserts per dialect: "insert, or replace the existing row of this ticket" in one statement,
# so concurrent answers for one ticket leave exactly one row.
_UPSERT_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql, "mariadb": mysql}


@dataclass(frozen=True)
class Feedback:
    ticket_id: str
    tenant: str
    source: str | None
    received_at: dt.datetime
    token_id: str | None = None  # which API token sent it (the history keeps it)


@dataclass
class FeedbackLabels:
    """What the nightly trains on, and what it left out (tenant → tickets)."""

    accepted: dict[str, str] = field(default_factory=dict)  # ticket → tenant
    held: dict[str, int] = field(default_factory=dict)  # new tenants awaiting confirmation
    rejected: dict[str, int] = field(default_factory=dict)  # new tenants refused by the policy


class FeedbackStore:
    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            raise ConfigError(f"serve.feedback_db_url: {url!r} is not an SQLAlchemy URL") from None
        if parsed.get_backend_name() not in _UPSERT_DIALECTS:
            raise ConfigError(
                f"serve.feedback_db_url: database '{parsed.get_backend_name()}' is not supported "
                f"(use one of {', '.join(sorted(_UPSERT_DIALECTS))})"
            )
        self.url = parsed
        self.engine = _engine(parsed)
        _metadata.create_all(self.engine)

    def record(
        self, ticket_id: str, tenant: str, source: str | None = None, token_id: str | None = None
    ) -> Feedback:
        """Append the answer to the history and make it the ticket's current one, in one
        transaction; returns once it is committed."""
        feedback = Feedback(ticket_id, tenant, source, _now(), token_id)
        values: dict[str, Any] = {
            "ticket_id": ticket_id,
            "tenant": tenant,
            "source": source,
            "received_at": feedback.received_at,
        }
        dialect = _UPSERT_DIALECTS[self.engine.dialect.name]
        statement = dialect.insert(FEEDBACK_TABLE).values(values)
        replace = {name: statement.excluded[name] for name in ("tenant", "source", "received_at")}
        if dialect is mysql:
            statement = statement.on_duplicate_key_update(
                {name: statement.inserted[name] for name in replace}
            )
        else:  # an answer that lost a race to a newer one stays in the history only
            newer = FEEDBACK_TABLE.c.received_at <= statement.excluded.received_at
            statement = statement.on_conflict_do_update(
                index_elements=["ticket_id"], set_=replace, where=newer
            )
        with self.engine.begin() as connection:
            connection.execute(sa.insert(HISTORY_TABLE).values({**values, "token_id": token_id}))
            connection.execute(statement)
        return feedback

    def get(self, ticket_id: str) -> Feedback | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(FEEDBACK_TABLE).where(FEEDBACK_TABLE.c.ticket_id == ticket_id)
            ).first()
        return None if row is None else _feedback(row)

    def read(self, since: dt.datetime | None = None) -> pd.DataFrame:
        """Answers received at or after ``since`` (all when None), oldest first."""
        query = sa.select(FEEDBACK_TABLE).order_by(FEEDBACK_TABLE.c.received_at)
        if since is not None:
            query = query.where(FEEDBACK_TABLE.c.received_at >= since)
        with self.engine.connect() as connection:
            rows = [_feedback(row) for row in connection.execute(query)]
        return pd.DataFrame(rows, columns=["ticket_id", "tenant", "source", "received_at"])

    def history(self) -> pd.DataFrame:
        """Every answer, oldest first: the history table, plus the current rows it lacks (those
        written before the history existed; their earlier answers were overwritten then)."""
        current = FEEDBACK_TABLE.c
        in_history = sa.exists().where(
            HISTORY_TABLE.c.ticket_id == current.ticket_id, HISTORY_TABLE.c.received_at == current.received_at
        )
        legacy = sa.select(
            current.ticket_id,
            current.tenant,
            current.source,
            sa.null().label("token_id"),
            current.received_at,
        ).where(~in_history)
        answers = sa.select(*(HISTORY_TABLE.c[name] for name in HISTORY_COLUMNS)).order_by(HISTORY_TABLE.c.id)
        with self.engine.connect() as connection:
            rows = [*connection.execute(legacy), *connection.execute(answers)]
        frame = pd.DataFrame([tuple(row) for row in rows], columns=HISTORY_COLUMNS)
        frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True)  # SQLite keeps no zone
        return frame.sort_values("received_at", kind="stable", ignore_index=True)

    def labels(self, known_tenants: Collection[str], policy: FeedbackConfig) -> FeedbackLabels:
        """The current label of each ticket, filtered by ``policy`` (see :func:`accepted_labels`)."""
        return accepted_labels(self.history(), known_tenants, policy)

    def close(self) -> None:
        self.engine.dispose()


def _engine(url: sa.URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _wal(connection: Any, record: Any) -> None:
        # Several Serve replicas (processes) write the same file: WAL lets readers and one
        # writer work at once, and writers wait for each other instead of failing.
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def _now() -> dt.datetime:
    """When an answer is received (the one clock of the store; tests set it)."""
    return dt.datetime.now(dt.UTC)


def _utc(received: dt.datetime) -> dt.datetime:
    """SQLite keeps no zone: we only ever store UTC."""
    return received.replace(tzinfo=dt.UTC) if received.tzinfo is None else received


def _feedback(row: sa.Row[Any]) -> Feedback:
    return Feedback(row.ticket_id, row.tenant, row.source, _utc(row.received_at))


def accepted_labels(
    history: pd.DataFrame, known_tenants: Collection[str], policy: FeedbackConfig
) -> FeedbackLabels:
    """Each ticket's current label (its latest answer) if the policy lets it into training.

    A tenant in ``known_tenants`` (the champion's) is taken. Another one, per
    ``policy.new_tenants``: ``accept`` takes it, ``reject`` leaves it out, ``hold`` takes it once
    ``policy.confirmations`` distinct tickets currently name it or two distinct sources ever did.
    """
    current = history.drop_duplicates("ticket_id", keep="last")  # history is oldest first
    known = set(known_tenants)
    tickets = Counter(current.tenant)
    sources = history.dropna(subset=["source"]).groupby("tenant")["source"].nunique()
    labels = FeedbackLabels()
    for ticket, tenant in zip(current.ticket_id, current.tenant, strict=True):
        confirmed = tickets[tenant] >= policy.confirmations or sources.get(tenant, 0) >= 2
        if tenant in known or policy.new_tenants == "accept" or (policy.new_tenants == "hold" and confirmed):
            labels.accepted[ticket] = tenant
        elif policy.new_tenants == "reject":
            labels.rejected[tenant] = labels.rejected.get(tenant, 0) + 1
        else:
            labels.held[tenant] = labels.held.get(tenant, 0) + 1
    return labels


def changed_labels(archive: Archive, until: dt.date, labels: dict[str, str]) -> int:
    """How many of ``labels`` (ticket → tenant) differ from the archive's label of that ticket
    (a ticket the archive left without an owner counts; one it does not hold does not). Reads
    only the two columns, and only the rows of those tickets."""
    if not labels:
        return 0
    tickets = pa.array(list(labels), pa.string())
    changed = 0
    for partition in archive.partitions(until=until):
        for path in partition.files:
            table = archive.read_columns(path, ["ticket_id", LABEL_COLUMN])  # names a broken file
            table = table.filter(pc.is_in(table["ticket_id"], value_set=tickets))
            pairs = zip(table["ticket_id"].to_pylist(), table[LABEL_COLUMN].to_pylist(), strict=True)
            changed += sum(labels[ticket] != tenant for ticket, tenant in pairs)
    return changed
