"""LabelSet: tenant ids stay stable as tenants are added."""

from __future__ import annotations

import pytest

from pipelines.errors import ModelError
from pipelines.model.artifact import LabelSet


def test_extended_labels_keep_every_old_id_and_append_new_tenants_sorted() -> None:
    old = LabelSet.from_tenants(["b", "a", "c"])
    grown = old.extended(["z", "a", "d"])  # "b" and "c" absent from recent data: kept
    assert grown.tenants[: len(old)] == old.tenants
    assert grown.tenants[len(old) :] == ("d", "z")


def test_label_ids_are_stable_when_tenants_are_added() -> None:
    labels = LabelSet.from_tenants(["30002", "10197", "10197"])
    assert labels.tenants == ("10197", "30002")
    grown = labels.extended(["20001", "10197"])
    assert grown.tenants == ("10197", "30002", "20001")  # old ids unchanged, new appended
    with pytest.raises(ModelError, match="twice"):
        LabelSet(("1", "1"))
