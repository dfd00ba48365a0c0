"""Column names of the ticket contract and of prepared rows, and the reasons a row is rejected."""

from __future__ import annotations

REQUIRED_COLUMNS: tuple[str, ...] = ("ticket_id", "created_at", "title")
OPTIONAL_TEXT_COLUMNS: tuple[str, ...] = (
    "description",
    "service",
    "cluster",
    "region",
    "source",
    "severity",
)
LABEL_COLUMN = "tenant"
TEXT_COLUMNS: tuple[str, ...] = ("title", *OPTIONAL_TEXT_COLUMNS)

# Why a row was rejected; rejected rows are counted and kept, never silently dropped.
REJECT_NULL_TICKET_ID = "null_ticket_id"
REJECT_NULL_CREATED_AT = "null_created_at"
REJECT_EMPTY_TITLE = "empty_title"
REJECT_DUPLICATE_TICKET_ID = "duplicate_ticket_id"
REJECT_REASON_COLUMN = "reject_reason"

DAY_COLUMN = "day"
TEXT_COLUMN = "text"
PATH_COLUMN = "path"
REJECT_STALE_OWNER = "stale_owner"
