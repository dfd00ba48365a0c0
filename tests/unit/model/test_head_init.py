"""A new tenant's head row starts from its own tickets: before any training step the grown model
already routes the new tenant's tickets to it far more often than a random row does, and the
known tenants' rows are untouched (the tiny preset base; no Ray)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from pipelines.config import ModelConfig
from pipelines.contract.columns import LABEL_COLUMN
from pipelines.model.base import load_tokenizer
from pipelines.model.batching import pad_batch
from pipelines.model.classifier import build_classifier, grow_head, load_trainable_state, trainable_state_dict
from pipelines.model.head_init import init_new_tenant_rows


def tickets(small_archive: tuple[Path, dict]) -> pd.DataFrame:
    """Three tenants' tickets of the small archive, titles and descriptions as text."""
    rows = pd.concat(pd.read_parquet(path) for path in sorted(small_archive[0].rglob("*.parquet")))
    tenants = rows[LABEL_COLUMN].value_counts().index[:3].tolist()
    rows = rows[rows[LABEL_COLUMN].isin(tenants)].head(240)
    return rows.assign(
        text=rows["title"] + "\n" + rows["description"].fillna(""),
        tenant_id=rows[LABEL_COLUMN].map({t: i for i, t in enumerate(tenants)}),
    )


def batches(rows: pd.DataFrame, tokenizer, size: int = 64) -> list[dict[str, torch.Tensor]]:
    out = []
    for start in range(0, len(rows), size):
        chunk = rows.iloc[start : start + size]
        ids = tokenizer(chunk["text"].tolist(), truncation=True, max_length=64)["input_ids"]
        batch = pad_batch(ids, tokenizer.pad_token_id)
        batch["labels"] = torch.tensor(chunk["tenant_id"].to_numpy(), dtype=torch.long)
        out.append(batch)
    return out


def routed_to_new_tenant(model: torch.nn.Module, data: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """Share of the new tenant's tickets routed to it (recall), and of the others' (taken)."""
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(1)
                for b in data
            ]
        )
    labels = torch.cat([b["labels"] for b in data])
    to_new = predicted == 2
    return float(to_new[labels == 2].float().mean()), float(to_new[labels != 2].float().mean())


@pytest.fixture(scope="module")
def grown_models(
    tiny_base: Path, small_archive: tuple[Path, dict]
) -> tuple[torch.nn.Module, torch.nn.Module, dict, list]:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_base, max_length=64)
    data = batches(tickets(small_archive), tokenizer)
    previous = trainable_state_dict(
        build_classifier(tiny_base, 2, pad_token_id=tokenizer.pad_token_id, model_config=ModelConfig())
    )
    models = []
    for _ in range(2):
        model = build_classifier(
            tiny_base, 3, pad_token_id=tokenizer.pad_token_id, model_config=ModelConfig()
        )
        load_trainable_state(model, grow_head(previous, trainable_state_dict(model), known_labels=2))
        models.append(model)
    return models[0], models[1], previous, data


def test_informed_rows_route_the_new_tenants_tickets_to_it_before_training(grown_models) -> None:
    random_init, informed, previous, data = grown_models
    before, taken_before = routed_to_new_tenant(random_init, data)

    assert init_new_tenant_rows(informed, iter(data), known_labels=2) == [2]

    after, taken_after = routed_to_new_tenant(informed, data)
    print(
        f"before training: new tenant recall random row {before:.2f}, informed row {after:.2f}; "
        f"other tenants' tickets taken {taken_before:.2f}, {taken_after:.2f}"
    )
    assert after >= 0.7 and after >= before + 0.1
    assert taken_after <= taken_before + 0.1
    head = next(
        v
        for k, v in trainable_state_dict(informed).items()
        if "score" in k.split(".") and k.endswith("weight")
    )
    old_head = next(v for k, v in previous.items() if "score" in k.split(".") and k.endswith("weight"))
    assert torch.equal(head[:2], old_head)  # known tenants untouched


def test_a_new_tenant_without_tickets_keeps_its_random_row(grown_models) -> None:
    random_init, _, _, data = grown_models
    without_new = [{k: v[b["labels"] != 2] for k, v in b.items()} for b in data]
    before = dict(trainable_state_dict(random_init))
    assert init_new_tenant_rows(random_init, iter(without_new), known_labels=2) == []
    assert all(torch.equal(before[k], v) for k, v in trainable_state_dict(random_init).items())
