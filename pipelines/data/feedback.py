"""Routing feedback: the tenant that really owns a ticket, as told by a person or a tool.

One row per ticket (the latest answer wins), in any SQL database SQLAlchemy speaks: SQLite
under the data dir by default, PostgreSQL in production. The Serve endpoint writes it, the
nightly pipeline reads it as labels that override the archive's.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

MAX_TICKET_ID_CHARS = 256
MAX_TENANT_CHARS = 256
MAX_SOURCE_CHARS = 128
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
# Upserts per dialect: "insert, or replace the existing row of this ticket" in one statement,
# so concurrent answers for one ticket leave exactly one row.
_UPSERT_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql, "mysql": mysql, "mariadb": mysql}


@dataclass(frozen=True)
class Feedback:
    ticket_id: str
    tenant: str
    source: str | None
    received_at: dt.datetime


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

    def record(self, ticket_id: str, tenant: str, source: str | None = None) -> Feedback:
        """Store (or replace) the answer for a ticket; returns once it is committed."""
        feedback = Feedback(ticket_id, tenant, source, dt.datetime.now(dt.UTC))
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
        else:
            statement = statement.on_conflict_do_update(index_elements=["ticket_id"], set_=replace)
        with self.engine.begin() as connection:
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


def _feedback(row: sa.Row[Any]) -> Feedback:
    received = row.received_at
    if received.tzinfo is None:  # SQLite keeps no zone: we only ever store UTC
        received = received.replace(tzinfo=dt.UTC)
    return Feedback(row.ticket_id, row.tenant, row.source, received)
