"""Ownership changes: services that moved to another tenant, and marking tickets of earlier owners
stale so training does not learn a route that no longer holds."""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import ray.data

from pipelines.contract.columns import DAY_COLUMN, LABEL_COLUMN, REJECT_REASON_COLUMN, REJECT_STALE_OWNER

log = logging.getLogger(__name__)

# Ownership changes inside the training days (see ownership_changes).
MIN_OWNER_SHARE = 0.6
MIN_NEW_OWNER_DAYS = 2
MIN_NEW_OWNER_TICKETS = 4


def ownership_changes(prepared: ray.data.Dataset, days: tuple[dt.date, ...]) -> dict[str, str]:
    """Services whose owner changed within ``days``, and their current owner.

    A day's owner of a service is the tenant of at least ``MIN_OWNER_SHARE`` of its tickets that
    day. A service changed owner when its owner on the latest days (a run of at least
    ``MIN_NEW_OWNER_DAYS`` days, ``MIN_NEW_OWNER_TICKETS`` tickets) differs from an earlier day's."""

    def counts(batch: pd.DataFrame) -> pd.DataFrame:
        keep = (
            batch[REJECT_REASON_COLUMN].isna()
            & batch[LABEL_COLUMN].notna()
            & batch["service"].notna()
            & batch[DAY_COLUMN].isin(days)
        )
        keys = batch.loc[keep, ["service", DAY_COLUMN, LABEL_COLUMN]].astype(object)
        return keys.value_counts().rename("rows").reset_index()

    per_block = prepared.map_batches(counts, batch_format="pandas").to_pandas()
    if per_block.empty:
        return {}
    return changed_owners(
        per_block.groupby(["service", DAY_COLUMN, LABEL_COLUMN], as_index=False)["rows"].sum()
    )


def changed_owners(totals: pd.DataFrame) -> dict[str, str]:
    """The rule of :func:`ownership_changes` on (service, day, tenant, rows) counts."""
    changes = {}
    for service, rows in totals.groupby("service"):
        daily = []  # (day, owner or None, tickets) oldest first
        for day, group in rows.groupby(DAY_COLUMN):
            top = group.loc[group["rows"].idxmax()]
            clear = top["rows"] >= MIN_OWNER_SHARE * group["rows"].sum()
            daily.append((day, str(top[LABEL_COLUMN]) if clear else None, int(group["rows"].sum())))
        owners = [owner for _, owner, _ in daily if owner]
        if not owners:
            continue
        current, run_days, run_tickets = owners[-1], 0, 0
        for _, owner, tickets in reversed(daily):
            if owner != current:
                break
            run_days, run_tickets = run_days + 1, run_tickets + tickets
        earlier = {owner for _, owner, _ in daily[: len(daily) - run_days] if owner}
        if earlier - {current} and run_days >= MIN_NEW_OWNER_DAYS and run_tickets >= MIN_NEW_OWNER_TICKETS:
            changes[str(service)] = current
    return changes


class MarkStaleOwnership:
    """Tickets of a service that has changed owner since, labelled with an earlier owner, are
    left out of training (counted under ``stale_owner``): otherwise the model keeps learning the
    old owner from them, the replayed ones above all."""

    def __init__(self, current_owners: dict[str, str], days: tuple[dt.date, ...]) -> None:
        self.current_owners = current_owners
        self.days = set(days)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        owner = batch["service"].map(self.current_owners)
        stale = (
            batch[REJECT_REASON_COLUMN].isna()
            & owner.notna()
            & batch[LABEL_COLUMN].notna()
            & (batch[LABEL_COLUMN] != owner)
            & batch[DAY_COLUMN].isin(self.days)
        )
        batch[REJECT_REASON_COLUMN] = batch[REJECT_REASON_COLUMN].mask(stale, REJECT_STALE_OWNER)
        return batch


def without_stale_ownership(prepared: ray.data.Dataset, days: tuple[dt.date, ...]) -> ray.data.Dataset:
    changes = ownership_changes(prepared, days)
    if not changes:
        return prepared
    log.info(
        "%d service(s) changed owner within the training days; their tickets of earlier owners are "
        "left out: %s",
        len(changes),
        ", ".join(f"{service} → {owner}" for service, owner in sorted(changes.items())[:10]),
    )
    return prepared.map_batches(
        MarkStaleOwnership,
        fn_constructor_kwargs={"current_owners": changes, "days": days},
        batch_format="pandas",
    ).materialize()
