"""A version registered by the code before the layout move (commit 193a5d9) still loads, scores,
serves and rescores.

``tests/fixtures/pre_layout_version`` holds that code's pyfunc ``model/`` directory (the run
artifact a version points at, with its own copy of the pyfunc code, which imports
``pipelines.predict``) and the answers that code gave (``expected.json``; see ``make_fixture.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import OncallConfig
from pipelines.contract.columns import TEXT_COLUMNS
from pipelines.contract.rows import TICKET_SCHEMA
from pipelines.inference.rescore import RescoreRequest, rescore
from pipelines.inference.table import ScoredTable
from pipelines.model.artifact import LabelSet
from pipelines.predict import TicketClassifier
from pipelines.registry.tracking import MODEL_ARTIFACT, Tracker
from pipelines.registry.versions import CHAMPION, Registry
from serve.client import RouterClient
from tests.conftest import small_config
from tests.integration.serving import deployed, serving_config

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pre_layout_version"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
TICKETS: list[dict[str, str]] = EXPECTED["tickets"]
ANSWERS: list[dict[str, Any]] = EXPECTED["answers"]
CLASSIFIER_DIR = FIXTURE / "model" / "artifacts" / "classifier"
MODEL_NAME = "pre-layout"
# The fixture's version also reads a `component` field, which neither the archive nor the HTTP
# contract carries: only the tickets made of contract columns go through those paths.
CONTRACT = [i for i, ticket in enumerate(TICKETS) if set(ticket) <= set(TEXT_COLUMNS)]
ARCHIVE_DAYS = [dt.date(2026, 10, 1), dt.date(2026, 10, 2)]


def scores(records: Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(score) for r in records for score in (r["confidence"], *(e["score"] for e in r["top_k"]))]


def assert_expected(
    records: Sequence[Mapping[str, Any]], indices: Sequence[int] = range(len(TICKETS))
) -> None:
    """Answers in the serialized form of a prediction (``Prediction.as_record``: what Serve, the
    pyfunc and the scored table return) against the pre-move ones: tenant, ranking and abstain
    equal, scores within 1e-5."""
    expected = [
        {**ANSWERS[i], "top_k": [{"tenant": t, "score": s} for t, s in ANSWERS[i]["top_k"]]} for i in indices
    ]
    assert [(r["tenant"], bool(r["abstain"]), [e["tenant"] for e in r["top_k"]]) for r in records] == [
        (a["tenant"], a["abstain"], [e["tenant"] for e in a["top_k"]]) for a in expected
    ]
    assert scores(records) == pytest.approx(scores(expected), abs=1e-5)


def test_the_classifier_directory_gives_the_pre_move_answers() -> None:
    classifier = TicketClassifier.from_dir(CLASSIFIER_DIR)
    assert_expected([p.as_record() for p in classifier.predict(TICKETS, top_k=3)])


def test_the_versions_own_pyfunc_code_gives_the_pre_move_answers(tmp_path: Path) -> None:
    model_dir = shutil.copytree(FIXTURE / "model", tmp_path / "model")  # MLflow may write beside it
    frame = mlflow.pyfunc.load_model(str(model_dir)).predict(pd.DataFrame(TICKETS))
    assert_expected([{**row, "top_k": json.loads(row["top_k"])} for row in frame.to_dict("records")])


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> OncallConfig:
    """A fresh embedded registry whose champion is the fixture: its ``model/`` directory logged as
    a run's model artifact and registered the way training registers a run."""
    config = small_config(tmp_path_factory.mktemp("pre_layout"), **{"registry.model_name": MODEL_NAME})
    with Tracker(config).run(config.registry.experiment, run_name="registered-before-the-move") as run:
        run.artifacts(FIXTURE / "model", MODEL_ARTIFACT)
    Registry(config).register_run(run.run_id, alias=CHAMPION)
    return config


def test_the_registered_version_loads_the_way_a_serve_replica_loads_it(registered: OncallConfig) -> None:
    registry = Registry(registered)
    ref = registry.get(alias=CHAMPION)
    classifier = registry.load_classifier(ref)  # what a Serve replica calls (TicketRouterModel.refresh)
    assert classifier.version == ref.version == "1"
    assert_expected([p.as_record() for p in classifier.predict(TICKETS, top_k=3)])


@pytest.mark.usefixtures("ray_cluster")
def test_real_serve_routes_contract_tickets_with_the_pre_move_answers(
    registered: OncallConfig, tmp_path: Path
) -> None:
    config = serving_config(registered, MODEL_NAME, f"sqlite:///{tmp_path / 'feedback.db'}")
    with deployed(config) as url:
        results = RouterClient(url).route_batch([TICKETS[i] for i in CONTRACT])
    assert {(r["model"]["name"], r["model"]["version"]) for r in results} == {(MODEL_NAME, "1")}
    assert_expected(results, CONTRACT)


@pytest.fixture
def archive_with_fixture_tickets(tmp_path: Path, small_archive: tuple[Path, dict]) -> Path:
    """Two days of the small archive; the second also holds the fixture's contract tickets."""
    root = tmp_path / "archive"
    for day in ARCHIVE_DAYS:
        shutil.copytree(small_archive[0] / f"date={day}", root / f"date={day}")
    created = dt.datetime.combine(ARCHIVE_DAYS[-1], dt.time(12), tzinfo=dt.UTC)
    rows = [{"ticket_id": f"PRE-{i}", "created_at": created, **TICKETS[i]} for i in CONTRACT]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=TICKET_SCHEMA), root / f"date={ARCHIVE_DAYS[-1]}" / "part-1.parquet"
    )
    return root


@pytest.mark.usefixtures("ray_cluster")
def test_rescore_scores_an_archive_with_the_registered_version(
    registered: OncallConfig, archive_with_fixture_tickets: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scored"
    summary = rescore(
        registered, RescoreRequest(archive_uri=str(archive_with_fixture_tickets), out_uri=str(out))
    )

    archived = pq.read_table(archive_with_fixture_tickets).num_rows
    assert (summary.model_name, summary.model_version) == (MODEL_NAME, "1")
    assert summary.rows_read == archived == summary.rows_scored + sum(summary.rejected.values())
    scored = ScoredTable.open(registered, str(out)).read("1").to_pandas().set_index("ticket_id")
    assert len(scored) == summary.rows_scored
    assert set(scored["predicted_tenant"]) <= set(LabelSet.load(CLASSIFIER_DIR).tenants)
    fixture_rows = scored.loc[[f"PRE-{i}" for i in CONTRACT]]
    assert_expected(
        [{**row, "tenant": row["predicted_tenant"]} for row in fixture_rows.to_dict("records")], CONTRACT
    )
