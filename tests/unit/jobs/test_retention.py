"""Retention removes old checkpoints and scratch data by policy, and never the checkpoints of a
version holding champion, previous or challenger, a run in progress or a live Ray session: real
directories (local and S3 through moto), a real SQLite MLflow registry, the console script."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.config import OncallConfig, RetentionConfig
from pipelines.contract.archive import Archive
from pipelines.jobs.nightly import NightlyRequest, _NightlyRun, describe
from pipelines.jobs.retention import Entry, Inventory, plan_retention, run_retention, survey
from pipelines.ray_runtime import TerminatedError
from pipelines.registry.lock import jobs_lock
from pipelines.registry.tracking import Tracker
from pipelines.registry.versions import CHALLENGER, CHAMPION, PREVIOUS, Registry
from tests.unit.registry.jobs_cli import config_at, run_cli

NOW = dt.datetime.now(dt.UTC)
ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)


def write_tree(root: Path, size: int, age_days: float) -> Path:
    """A directory with one file of ``size`` bytes, everything in it last written ``age_days`` ago."""
    (root / "checkpoint_0").mkdir(parents=True)
    (root / "checkpoint_0" / "trainable.safetensors").write_bytes(b"x" * size)
    stamp = (NOW - dt.timedelta(days=age_days)).timestamp()
    for path in (root / "checkpoint_0" / "trainable.safetensors", root / "checkpoint_0", root):
        os.utime(path, (stamp, stamp))
    return root


def finished_run(tracker: Tracker, experiment: str) -> str:
    with tracker.run(experiment) as run:
        return run.run_id


@dataclass
class Store:
    """A data dir whose registry has three aliased versions, and a checkpoint directory for
    each of its training runs: run name → run id."""

    config: OncallConfig
    runs: dict[str, str]

    def checkpoints(self, name: str) -> Path:
        return self.config.ray_storage_dir / f"train-{self.runs[name]}"


# name → (age in days, aliased version, MLflow status); the aliased runs are the oldest.
RUNS = {
    "champion": (40, CHAMPION, "FINISHED"),
    "previous": (35, PREVIOUS, "FINISHED"),
    "challenger": (30, CHALLENGER, "FINISHED"),
    "old": (20, None, "FINISHED"),
    "older-failed": (25, None, "FAILED"),
    "recent": (2, None, "FINISHED"),
    "in-progress": (0.1, None, "RUNNING"),
    "abandoned": (15, None, "RUNNING"),
}
UNKNOWN_RECENT, UNKNOWN_OLD = "a" * 32, "b" * 32  # directories of runs the tracking store does not know


@pytest.fixture(autouse=True)
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir retention scans for scratch: the test's own, never the machine's /tmp (where
    other processes' scratch directories come and go)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


@pytest.fixture
def store(tmp_path: Path) -> Store:
    config = config_at(tmp_path / "data", **{"retention.checkpoint_runs_kept": 1})
    tracker, registry = Tracker(config), Registry(config)
    experiment = config.registry.experiment
    registry.client.create_registered_model(registry.name)
    runs = {}
    for name, (age, alias, status) in RUNS.items():
        if status == "RUNNING":
            run_id = tracker.client.create_run(tracker.experiment_id(experiment)).info.run_id
        else:
            run_id = finished_run(tracker, experiment)
            tracker.client.set_terminated(run_id, status=status)
        runs[name] = run_id
        if alias:
            version = registry.client.create_model_version(registry.name, source=str(tmp_path), run_id=run_id)
            registry.set_alias(alias, str(version.version))
        write_tree(config.ray_storage_dir / f"train-{run_id}", 1000, age)
    runs |= {"unknown-recent": UNKNOWN_RECENT, "unknown-old": UNKNOWN_OLD}
    write_tree(config.ray_storage_dir / f"train-{UNKNOWN_RECENT}", 1000, 1)
    write_tree(config.ray_storage_dir / f"train-{UNKNOWN_OLD}", 1000, 30)
    return Store(config, runs)


def removed_names(store: Store, uris: list[str]) -> set[str]:
    return {name for name in store.runs if str(store.checkpoints(name)) in uris}


def test_the_plan_keeps_aliased_versions_runs_in_progress_and_the_newest_and_removes_the_rest(
    store: Store,
) -> None:
    plan = plan_retention(survey(store.config), store.config.retention, NOW)
    removing = [v.uri for v in plan if v.remove]
    assert removed_names(store, removing) == {"old", "older-failed", "abandoned", "unknown-old"}
    reasons = {v.uri: v.reason for v in plan}
    for alias in ALIASES:
        assert alias in reasons[str(store.checkpoints(alias))]
    assert "not ended" in reasons[str(store.checkpoints("in-progress"))]
    assert "newest" in reasons[str(store.checkpoints("recent"))]


def test_retention_removes_the_plan_and_frees_its_bytes_then_has_nothing_left_to_do(store: Store) -> None:
    dry = run_retention(store.config, dry_run=True)
    assert dry.removed == [] and dry.bytes_planned == 4000
    assert all(store.checkpoints(name).is_dir() for name in store.runs)

    done = run_retention(store.config)
    assert done.ok and removed_names(store, done.removed) == {
        "old",
        "older-failed",
        "abandoned",
        "unknown-old",
    }
    assert done.bytes_freed == 4000
    left = {name for name in store.runs if store.checkpoints(name).is_dir()}
    assert left == {*ALIASES, "recent", "in-progress", "unknown-recent"}
    assert run_retention(store.config).removed == []


def test_retention_never_removes_checkpoints_of_an_aliased_version_whatever_the_policy(store: Store) -> None:
    found = survey(store.config)
    aliased = {str(store.checkpoints(alias)) for alias in ALIASES}
    for kept in (0, 1, 5):
        for max_age_days in (1, 30, 365):
            policy = RetentionConfig(checkpoint_runs_kept=kept, max_age_days=max_age_days)
            far_future = NOW + dt.timedelta(days=3650)  # every directory is stale then
            for now in (NOW, far_future):
                plan = plan_retention(found, policy, now)
                assert not aliased & {v.uri for v in plan if v.remove}, (kept, max_age_days, now)
                assert aliased <= {v.uri for v in plan}


def test_an_alias_that_moves_protects_its_new_run_and_frees_the_old_one(store: Store) -> None:
    registry = Registry(store.config)
    version = registry.client.create_model_version(registry.name, source="x", run_id=store.runs["old"])
    registry.set_alias(PREVIOUS, str(version.version))  # `old` becomes previous; `previous` loses it
    plan = plan_retention(survey(store.config), store.config.retention, NOW)
    removing = removed_names(store, [v.uri for v in plan if v.remove])
    assert "old" not in removing and "previous" in removing


def session(sessions: Path, pid: int, age_days: float, stamp: str = "2026-10-01_02-00-00_123456") -> Path:
    return write_tree(sessions / f"session_{stamp}_{pid}", 500, age_days)


def dead_pid() -> int:
    """The id of a process that has ended (reaped, so the id is free)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_ray_sessions_are_removed_once_their_ray_ended_and_went_quiet(tmp_path: Path) -> None:
    config = config_at(tmp_path / "data")
    sessions = config.ray_sessions_dir
    live = session(sessions, os.getpid(), 30)
    ended = session(sessions, dead_pid(), 30, "2026-10-02_02-00-00_1")
    quiet_recently = session(sessions, dead_pid(), 2, "2026-10-03_02-00-00_1")
    latest = session(sessions, dead_pid(), 30, "2026-10-04_02-00-00_1")
    (sessions / "session_latest").symlink_to(latest)

    plan = {v.uri: v for v in plan_retention(survey(config), config.retention, NOW)}
    assert set(plan) == {str(p) for p in (live, ended, quiet_recently, latest)}  # the link is not a session
    assert [uri for uri, v in plan.items() if v.remove] == [str(ended)]
    assert "alive" in plan[str(live)].reason and "latest" in plan[str(latest)].reason


def test_scratch_directories_of_ended_jobs_are_removed_by_age_only_ours(
    tmp_path: Path, temp_dir: Path
) -> None:
    abandoned = write_tree(temp_dir / "oncall-rescore-k2j3", 700, 9)
    fresh = write_tree(temp_dir / "oncall-version-a81x", 700, 1)
    foreign = write_tree(temp_dir / "someone-else-old", 700, 90)
    config = config_at(tmp_path / "data")

    done = run_retention(config)
    assert done.removed == [str(abandoned)] and done.bytes_freed == 700
    assert fresh.is_dir() and foreign.is_dir() and not abandoned.exists()


def test_an_unreadable_registry_fails_the_plan_before_anything_is_removed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.errors import RegistryError

    def refuse(*_: object) -> None:
        raise RegistryError("registry down")

    monkeypatch.setattr(Registry, "alias_or_none", refuse)
    with pytest.raises(RegistryError):
        run_retention(store.config)
    assert all(store.checkpoints(name).is_dir() for name in store.runs)


def test_a_handmade_inventory_without_aliases_removes_by_age_and_rank() -> None:
    def checkpoints(run_id: str, age_days: float) -> Entry:
        modified = NOW - dt.timedelta(days=age_days)
        return Entry("checkpoints", f"s3://b/ray/train-{run_id}", 10, modified, run_id=run_id)

    found = Inventory(
        entries=[checkpoints("new", 1), checkpoints("mid", 5), checkpoints("aliased", 50)],
        aliased_runs={"aliased": "champion (version 1)"},
        ended_runs=frozenset({"new", "mid", "aliased"}),
    )
    plan = plan_retention(found, RetentionConfig(checkpoint_runs_kept=1), NOW)
    assert [(v.uri.rsplit("-", 1)[1], v.remove) for v in plan] == [
        ("new", False),
        ("mid", True),
        ("aliased", False),
    ]


# -- object storage -----------------------------------------------------------------------------


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 on loopback with a bucket ``ckpt``; dummy credentials."""
    import boto3
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="ckpt")
        yield endpoint
    finally:
        server.stop()


def test_checkpoints_on_s3_are_removed_through_the_object_store_but_not_the_champions(
    tmp_path: Path, s3_endpoint: str
) -> None:
    config = config_at(
        tmp_path / "data",
        **{
            "ray.storage_path": "s3://ckpt/ray",
            "storage.endpoint_url": s3_endpoint,
            "storage.region": "us-east-1",
            "retention.checkpoint_runs_kept": 0,
        },
    )
    tracker, registry = Tracker(config), Registry(config)
    champion, other = (finished_run(tracker, config.registry.experiment) for _ in range(2))
    registry.client.create_registered_model(registry.name)
    version = registry.client.create_model_version(registry.name, source="x", run_id=champion)
    registry.set_alias(CHAMPION, str(version.version))
    filesystem, root = config.object_store.resolve("s3://ckpt/ray")
    for run_id in (champion, other):
        with filesystem.open_output_stream(
            f"{root}/train-{run_id}/checkpoint_0/trainable.safetensors"
        ) as out:
            out.write(b"x" * 300)

    done = run_retention(config)
    assert done.removed == [f"s3://ckpt/ray/train-{other}"] and done.bytes_freed == 300
    from pyarrow.fs import FileSelector

    left = {info.path for info in filesystem.get_file_info(FileSelector(root, recursive=True))}
    assert f"{root}/train-{champion}/checkpoint_0/trainable.safetensors" in left
    assert not any(other in path for path in left)


# -- the nightly's last step ----------------------------------------------------------------------


def nightly_run(config: OncallConfig, tmp_path: Path) -> _NightlyRun:
    day = dt.date(2026, 10, 1)
    return _NightlyRun(config, NightlyRequest(date=day), Archive(str(tmp_path)), [day])


def test_the_nightly_reports_a_failed_retention_instead_of_failing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(config: OncallConfig) -> None:
        raise OSError("storage unreachable")

    run = nightly_run(store.config, tmp_path)
    run._retention()
    assert run.summary.retention_removed == 4 and run.summary.retention_error == ""
    assert describe(run.summary)["retention"] == "removed 4 (4.0 kB)"

    monkeypatch.setattr("pipelines.jobs.nightly.run_retention", broken)
    failed = nightly_run(store.config, tmp_path)
    failed._retention()
    assert describe(failed.summary)["retention"] == "failed: OSError: storage unreachable"

    def terminated(config: OncallConfig) -> None:
        raise TerminatedError("received signal 15")

    monkeypatch.setattr("pipelines.jobs.nightly.run_retention", terminated)
    with pytest.raises(TerminatedError):  # SIGTERM still stops the nightly
        nightly_run(store.config, tmp_path)._retention()


# -- the command ----------------------------------------------------------------------------------


def test_the_command_lists_with_dry_run_removes_without_and_waits_for_the_jobs_lock(store: Store) -> None:
    data_dir = str(store.config.data_dir)
    env = {"TMPDIR": tempfile.gettempdir(), "ONCALL_RETENTION__CHECKPOINT_RUNS_KEPT": "1"}

    dry = run_cli("--data-dir", data_dir, "--json", "retention", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    shown = json.loads(dry.stdout)
    assert shown["dry_run"] and shown["removed"] == [] and shown["bytes_planned"] == 4000
    assert removed_names(store, [v["uri"] for v in shown["plan"] if v["remove"]]) == {
        "old",
        "older-failed",
        "abandoned",
        "unknown-old",
    }
    assert store.checkpoints("old").is_dir()

    with jobs_lock(store.config, "nightly"):
        held = run_cli("--data-dir", data_dir, "retention", env=env)
    assert held.returncode == 75 and "another job holds" in held.stderr
    assert store.checkpoints("old").is_dir()

    done = run_cli("--data-dir", data_dir, "retention", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"removed checkpoints {store.checkpoints('old')}" in done.stdout
    assert f"kept checkpoints {store.checkpoints('champion')}" in done.stdout
    assert not store.checkpoints("old").exists() and store.checkpoints("champion").is_dir()
