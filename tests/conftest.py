"""Shared fixtures: one small generated archive and one tiny base per test session."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipelines.training.job import TrainResult

from pipelines.config import DataConfig, OncallConfig, load_config
from pipelines.contract.text import TextBuilder
from pipelines.data.sample.generator import SampleSpec, generate_archive

SMALL_SPEC = SampleSpec(
    days=10,
    tickets_per_day=400,
    tenants=24,
    new_tenants=2,
    moves=3,
    start=dt.date(2026, 10, 1),
    seed=7,
)


TESTS = Path(__file__).resolve().parent
SUITES = ("unit", "integration", "model", "production")  # tests/<suite>/…: the marker `make unit` etc. select


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by their suite folder (the first folder under tests/, at any depth below it)."""
    for item in items:
        suite = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if suite in SUITES:
            item.add_marker(getattr(pytest.mark, suite))


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A generated archive (10 days × 400 tickets, 24+2 tenants, 3 moves) and its manifest."""
    out = tmp_path_factory.mktemp("archive")
    return out, generate_archive(SMALL_SPEC, out)


@pytest.fixture(scope="session")
def text_builder() -> TextBuilder:
    return DataConfig().text_builder()


@pytest.fixture(scope="session")
def tiny_base(
    tmp_path_factory: pytest.TempPathFactory, small_archive: tuple[Path, dict], text_builder: TextBuilder
) -> Path:
    """A tiny base whose 2,000-token tokenizer is trained on the small archive."""
    from pipelines.training.init_base import init_base

    out = tmp_path_factory.mktemp("bases") / "tiny"
    return init_base("tiny", str(small_archive[0]), out, text_builder, vocab_size=2000, max_length=128)


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A feedback database: SQLite, and a scratch PostgreSQL database where
    ONCALL_TEST_POSTGRES_URL names a server (skipped otherwise)."""
    from tests.integration.mlflow_server import postgres_url_or_skip, scratch_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    with scratch_database(postgres_url_or_skip()) as url:
        yield url


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray for the whole session; jobs see it initialised and reuse it."""
    import ray

    from pipelines.config import ServeConfig
    from pipelines.ray_runtime import MIN_LOCAL_LOGICAL_CPUS, serve_environment

    # Serve in the shipped mode (what `oncall-router serve` starts a local Ray with); tests
    # restart Serve often, and no load balancer needs direct ingress's 30 s draining here.
    environment = {**serve_environment(ServeConfig()), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=MIN_LOCAL_LOGICAL_CPUS, include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def small_config(data_dir: Path, **overrides: object) -> OncallConfig:
    """Short texts and two epochs: the tiny model learns the small archive in about a minute."""
    return load_config(
        environ={},
        overrides={
            "data_dir": data_dir,
            "model.max_length": 64,
            "data.max_description_chars": 120,
            "train.epochs": 2,
            "train.batch_size": 32,
            **overrides,
        },
    )


@pytest.fixture(scope="session")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory,
    small_archive: tuple[Path, dict],
    tiny_base: Path,
    ray_cluster: None,
) -> tuple[OncallConfig, TrainResult]:
    """One training run (1 worker) on the small archive, registered as version 1 (challenger)."""
    from pipelines.training.job import TrainRequest, train

    config = small_config(tmp_path_factory.mktemp("trained"))
    return config, train(config, TrainRequest(archive_uri=str(small_archive[0]), base_dir=tiny_base))
