"""Arrow schemas of rescore: the actors' output batches and the rows of the scored table.

Kept apart from the table code so that the scoring actors import pyarrow only."""

from __future__ import annotations

import pyarrow as pa

from pipelines.contract.columns import LABEL_COLUMN, PATH_COLUMN, REJECT_REASON_COLUMN
from pipelines.contract.rows import TICKET_READ_SCHEMA, TIMESTAMP_TYPE

DATE_COLUMN = "date"  # the archive partition a row was read from (created_at may be null)
VERSION_COLUMN = "model_version"
CURRENT_TENANT_COLUMN = "current_tenant"  # the archive's label, renamed in the table

TOP_K_TYPE = pa.list_(pa.struct([pa.field("tenant", pa.string()), pa.field("score", pa.float32())]))
# What the actors add to each row (null on rejected rows, except the last three).
PREDICTION_FIELDS = [
    pa.field("predicted_tenant", pa.string()),
    pa.field("confidence", pa.float32()),
    pa.field("top_k", TOP_K_TYPE),
    pa.field("abstain", pa.bool_()),
    pa.field("misrouted", pa.bool_()),
    pa.field("model_name", pa.string()),
    pa.field(VERSION_COLUMN, pa.string()),
    pa.field("scored_at", TIMESTAMP_TYPE),
]
REJECTED_SCHEMA = TICKET_READ_SCHEMA.append(pa.field(REJECT_REASON_COLUMN, pa.string()))
# One actor output batch: the ticket's columns, its reason (null: scored), its file, the answer.
BATCH_SCHEMA = pa.schema([*REJECTED_SCHEMA, pa.field(PATH_COLUMN, pa.string()), *PREDICTION_FIELDS])

_TICKET_FIELDS = [
    pa.field(CURRENT_TENANT_COLUMN, f.type) if f.name == LABEL_COLUMN else f for f in TICKET_READ_SCHEMA
]
# A row of the scored table: scored rows have a null reject_reason, rejected rows null answers.
TABLE_SCHEMA = pa.schema(
    [
        pa.field(DATE_COLUMN, pa.date32()),
        *_TICKET_FIELDS,
        *PREDICTION_FIELDS[:5],
        pa.field(REJECT_REASON_COLUMN, pa.string()),
        *PREDICTION_FIELDS[5:],
    ]
)
# The table is partitioned by these columns (identity): a day of a version is whole data files,
# so its overwrite deletes files and rewrites none.
PARTITION_COLUMNS = (VERSION_COLUMN, DATE_COLUMN)
