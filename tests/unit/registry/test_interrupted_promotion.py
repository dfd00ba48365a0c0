"""A promotion that dies between its two alias moves is finished by the next job under the lock,
so ``champion`` and ``previous`` end where the gate put them (real embedded MLflow registry; the
crash is an exception raised by the second alias move)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import ModelError
from pipelines.registry.promotion import rollback
from pipelines.registry.versions import CHAMPION, PENDING_PROMOTION_TAG, PREVIOUS, Registry
from tests.unit.registry.jobs_cli import config_at


class JobKilledError(Exception):
    pass


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(config_at(tmp_path))
    registry.client.create_registered_model(registry.name)
    for _ in range(3):
        registry.client.create_model_version(registry.name, source=(tmp_path / "model").as_uri())
    registry.crown("1", dethroned=None)
    return registry


def aliases(registry: Registry) -> dict[str, str]:
    return {
        alias: str(version)
        for alias, version in registry.client.get_registered_model(registry.name).aliases.items()
    }


def crash_on_alias_move(registry: Registry, monkeypatch: pytest.MonkeyPatch, moves_before_crash: int) -> None:
    set_alias = registry.set_alias
    done: list[str] = []

    def dying(alias: str, version: str) -> None:
        if len(done) == moves_before_crash:
            raise JobKilledError
        done.append(alias)
        set_alias(alias, version)

    monkeypatch.setattr(registry, "set_alias", dying)


def test_a_crash_after_previous_moved_is_finished_by_the_next_job(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert aliases(registry) == {CHAMPION: "1"}
    with monkeypatch.context() as patch:
        crash_on_alias_move(registry, patch, moves_before_crash=1)
        with pytest.raises(JobKilledError):
            registry.crown("2", dethroned="1")
    assert aliases(registry) == {CHAMPION: "1", PREVIOUS: "1"}  # half done: the old champion serves
    assert PENDING_PROMOTION_TAG in registry.client.get_registered_model(registry.name).tags

    assert registry.finish_interrupted_promotion() == "2"

    assert aliases(registry) == {CHAMPION: "2", PREVIOUS: "1"}
    assert PENDING_PROMOTION_TAG not in registry.client.get_registered_model(registry.name).tags
    assert registry.finish_interrupted_promotion() is None  # nothing pending any more


def test_a_rollback_job_first_finishes_the_promotion_it_finds_pending(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.crown("2", dethroned="1")
    with monkeypatch.context() as patch:
        crash_on_alias_move(registry, patch, moves_before_crash=0)  # died before any alias moved
        with pytest.raises(JobKilledError):
            registry.crown("3", dethroned="2")
    assert aliases(registry) == {CHAMPION: "2", PREVIOUS: "1"}

    assert rollback(registry.config) == ("3", "2")  # 3 was crowned, then rolled back to 2

    assert aliases(registry) == {CHAMPION: "2"}


def test_an_interrupted_rollback_is_cleared_not_repeated(registry: Registry) -> None:
    registry.crown("2", dethroned="1")
    registry.set_alias(CHAMPION, "1")  # a rollback that died before clearing 'previous'
    with pytest.raises(ModelError, match="'previous' was version 1, the champion itself"):
        rollback(registry.config)
    assert aliases(registry) == {CHAMPION: "1"}


def test_a_pending_tag_edited_into_nonsense_is_a_clear_error(registry: Registry) -> None:
    registry.client.set_registered_model_tag(registry.name, PENDING_PROMOTION_TAG, "{oops")
    with pytest.raises(ModelError, match=f"tag {PENDING_PROMOTION_TAG} .* is not a pending promotion"):
        registry.finish_interrupted_promotion()
