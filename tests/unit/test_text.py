from __future__ import annotations

import pandas as pd

from pipelines.config import DataConfig
from pipelines.contract.text import TextBuilder

TICKET = {
    "title": "payment-gateway 在集群 sg1 出现大量 timeout",
    "service": "payment-gateway",
    "cluster": "sg1",
    "description": "line one\n\n   line two\tend",
    "severity": None,
    "source": float("nan"),
    "region": "  ",
}


def test_fields_in_configured_order_and_empty_ones_left_out() -> None:
    builder = TextBuilder(("service", "title", "severity", "source", "region", "cluster"), 160, 600)
    assert builder.build(TICKET) == (
        "service: payment-gateway | title: payment-gateway 在集群 sg1 出现大量 timeout | cluster: sg1"
    )
    reordered = TextBuilder(("cluster", "title"), 160, 600)
    assert reordered.build(TICKET).startswith("cluster: sg1 | title: ")


def test_whitespace_is_collapsed() -> None:
    assert TextBuilder(("description",), 160, 600).build(TICKET) == "description: line one line two end"


def test_long_description_keeps_its_head_and_other_fields_are_capped() -> None:
    builder = TextBuilder(("title", "description"), max_field_chars=20, max_description_chars=50)
    text = builder.build({"title": "t" * 100, "description": "HEAD " + "x" * 500 + " TAIL"})
    title, description = text.split(" | ")
    assert title == "title: " + "t" * 19 + "…"
    assert description.startswith("description: HEAD ")
    assert "TAIL" not in description
    assert len(description) == len("description: ") + 50


def test_frame_and_rows_give_the_same_texts_and_missing_columns_are_tolerated() -> None:
    builder = DataConfig().text_builder()
    frame = pd.DataFrame([TICKET, {"title": "only a title", "service": None}])
    texts = builder.build_many(frame)
    assert texts == [builder.build(TICKET), "title: only a title"]
    assert builder.build_many(frame.drop(columns=["description"]))[1] == "title: only a title"
