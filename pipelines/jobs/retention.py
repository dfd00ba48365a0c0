"""``retention``: remove what the jobs leave behind, by policy (``retention.*``).

What accumulates (measured on the embedded default: train, promote, nightly, rescore, serve):

- **Ray Train run directories**, ``<ray.storage_path>/train-<run id>/`` (default
  ``<data_dir>/ray``, ``s3://`` on a cluster): the last ``train.checkpoints_to_keep`` checkpoints
  of every training run (trainable weights and optimizer state), one directory per ``train`` and
  per nightly. A fit needs them only while it runs (to resume after a worker failure): the
  classifier itself is in MLflow. The newest ``retention.checkpoint_runs_kept`` are kept, and
  always those of versions holding an alias.
- **Ray sessions** of the local Rays the commands start, ``<data_dir>/ray/sessions/session_*``:
  the logs of every process of a command. Removed once the Ray ended and nothing was written for
  ``retention.max_age_days``.
- **Scratch directories** ``oncall-*`` in the temp dir: downloads of versions (model replicas,
  the nightly's warm start, rescore's driver and actors) and the jobs' staging. A process that
  ends normally removes its own; a killed one (OOM, SIGKILL, a lost node) leaves it behind.
  Removed after ``retention.max_age_days``. They carry no version identity and are copies, not
  a version's data (that stays in the registry): a live process holds one for minutes to hours,
  so age is what tells an abandoned one. Model replicas keep no cache of versions on disk.

Never removed: the checkpoints of a training run whose version holds ``champion``,
``previous``, ``challenger`` or ``serve.alias``; the checkpoints of a run that has not ended in
MLflow (RUNNING, or unknown to the tracking store) and wrote within ``max_age_days``; a Ray
session whose driver process is alive, the latest one, or one that wrote within
``max_age_days``. A registry that cannot be read fails the plan (a
:class:`~pipelines.errors.RegistryError`): nothing is removed on a guess.

:func:`survey` reads the disks and the registry, :func:`plan_retention` decides (a pure
function of what was found), :func:`apply_plan` removes; :func:`run_retention` is the command.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow.fs as pafs

from pipelines.config import OncallConfig, RetentionConfig
from pipelines.contract.storage import ObjectStore, is_remote
from pipelines.registry.lock import jobs_lock
from pipelines.registry.tracking import Tracker
from pipelines.registry.versions import CHALLENGER, CHAMPION, PREVIOUS, Registry

log = logging.getLogger(__name__)

Kind = Literal["checkpoints", "ray-session", "scratch"]
# Ray Train's run directory of a training run: `build_trainer(name=f"train-{run_id}")`.
TRAIN_RUN_DIR = re.compile(r"^train-(?P<run_id>[0-9a-f]{32})$")
# A local Ray's session: session_<date>_<time>_<µs>_<pid of the driver that started it>.
SESSION_DIR = re.compile(r"^session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_(?P<pid>\d+)$")
LATEST_SESSION = "session_latest"
# tempfile prefixes of the project's scratch directories (registry, nightly, training, rescore).
SCRATCH_DIR = re.compile(r"^oncall-(version|labels|nightly|train|rescore|sample)-")
ENDED_RUN_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})


@dataclass(frozen=True)
class Entry:
    """A directory retention may remove: where, how big, when anything in it was last written."""

    kind: Kind
    uri: str  # a local path or an object-store URI (s3://bucket/key)
    bytes: int
    modified: dt.datetime  # the newest mtime inside (the directory's own when it is empty)
    run_id: str = ""  # checkpoints: the training run
    pid: int | None = None  # ray-session: the driver process that started that Ray


@dataclass(frozen=True)
class Inventory:
    """What :func:`survey` found: the directories, and what protects some of them."""

    entries: list[Entry]
    aliased_runs: dict[str, str] = field(default_factory=dict)  # run id → "champion (version 3)"
    ended_runs: frozenset[str] = frozenset()  # training runs FINISHED, FAILED or KILLED in MLflow
    live_pids: frozenset[int] = frozenset()  # sessions' drivers alive on this host
    latest_session: str | None = None  # the directory session_latest points at


@dataclass(frozen=True)
class Verdict:
    """One directory of the plan: removed or kept, and why."""

    kind: Kind
    uri: str
    bytes: int
    modified: dt.datetime
    remove: bool
    reason: str


@dataclass
class RetentionResult:
    dry_run: bool
    plan: list[Verdict]  # every directory looked at
    removed: list[str] = field(default_factory=list)  # URIs removed
    failed: dict[str, str] = field(default_factory=dict)  # URI → why it could not be removed

    @property
    def bytes_planned(self) -> int:
        """Bytes of the directories the plan removes (what a dry run would free)."""
        return sum(v.bytes for v in self.plan if v.remove)

    @property
    def bytes_freed(self) -> int:
        removed = set(self.removed)
        return sum(v.bytes for v in self.plan if v.uri in removed)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_retention(config: OncallConfig, *, dry_run: bool = False) -> RetentionResult:
    """Plan and (unless ``dry_run``) remove, under the jobs' lock so that no nightly, promote,
    rollback or rescore moves an alias meanwhile. A dry run removes nothing and takes no lock."""
    if dry_run:
        return RetentionResult(dry_run=True, plan=_plan(config))
    with jobs_lock(config, "retention"):
        Registry(config).finish_interrupted_promotion()  # its new champion is then protected
        return apply_plan(config, _plan(config))


def _plan(config: OncallConfig) -> list[Verdict]:
    return plan_retention(survey(config), config.retention, dt.datetime.now(dt.UTC))


# -- survey: the disks, then the registry --------------------------------------------------------


def survey(config: OncallConfig) -> Inventory:
    """The directories under the policy and what protects them. The directories are listed
    before the registry is read: a training run is created in MLflow before its directory, so
    every run listed is known to the registry by then."""
    sessions_dir = config.ray_sessions_dir
    entries = [
        *_checkpoint_dirs(config.object_store, config.train_storage),
        *_session_dirs(sessions_dir),
        *_scratch_dirs(Path(tempfile.gettempdir())),
    ]
    run_ids = {entry.run_id for entry in entries if entry.run_id}
    latest = sessions_dir / LATEST_SESSION
    return Inventory(
        entries=entries,
        aliased_runs=_aliased_runs(config),
        ended_runs=_ended_runs(config, run_ids),
        live_pids=frozenset(e.pid for e in entries if e.pid is not None and _alive(e.pid)),
        latest_session=str(latest.resolve()) if latest.is_symlink() else None,
    )


def _checkpoint_dirs(store: ObjectStore, storage: str) -> list[Entry]:
    filesystem, root = store.resolve(storage)
    found = []
    for info in _subdirectories(filesystem, root):
        match = TRAIN_RUN_DIR.match(info.base_name)
        if match:
            uri = f"{storage.rstrip('/')}/{info.base_name}" if is_remote(storage) else info.path
            found.append(_entry("checkpoints", filesystem, info, uri, run_id=match["run_id"]))
    return found


def _session_dirs(sessions_dir: Path) -> list[Entry]:
    filesystem = pafs.LocalFileSystem()
    found = []
    for info in _subdirectories(filesystem, str(sessions_dir)):
        match = SESSION_DIR.match(info.base_name)
        if match:
            found.append(_entry("ray-session", filesystem, info, info.path, pid=int(match["pid"])))
    return found


def _scratch_dirs(temp_dir: Path) -> list[Entry]:
    """The project's scratch directories in the temp dir that this user owns (a shared /tmp
    holds other users' too)."""
    filesystem = pafs.LocalFileSystem()
    return [
        _entry("scratch", filesystem, info, info.path)
        for info in _subdirectories(filesystem, str(temp_dir))
        if SCRATCH_DIR.match(info.base_name) and _owned(info.path)
    ]


def _subdirectories(filesystem: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [info for info in infos if info.type == pafs.FileType.Directory]


def _entry(
    kind: Kind,
    filesystem: pafs.FileSystem,
    info: pafs.FileInfo,
    uri: str,
    *,
    run_id: str = "",
    pid: int | None = None,
) -> Entry:
    """The directory's size and newest mtime, from one recursive listing (local or object store:
    an object store's directories have no mtime, their objects do)."""
    inside = filesystem.get_file_info(pafs.FileSelector(info.path, recursive=True, allow_not_found=True))
    times = [i.mtime for i in (info, *inside) if i.mtime is not None]
    size = sum(i.size or 0 for i in inside if i.type == pafs.FileType.File)
    modified = max(times, default=dt.datetime.min.replace(tzinfo=dt.UTC))
    return Entry(kind=kind, uri=uri, bytes=size, modified=modified, run_id=run_id, pid=pid)


def _owned(path: str) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_uid == os.getuid()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """A process with this id exists on this host (a reused id keeps a session: the safe side)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _aliased_runs(config: OncallConfig) -> dict[str, str]:
    """Training run of each version that holds one of the aliases retention never touches."""
    registry = Registry(config)
    aliases = dict.fromkeys((CHAMPION, PREVIOUS, CHALLENGER, config.serve.alias))
    held: dict[str, list[str]] = {}
    for alias in aliases:
        ref = registry.alias_or_none(alias)
        if ref is not None and ref.run_id:
            held.setdefault(ref.run_id, []).append(f"{alias} (version {ref.version})")
    return {run_id: ", ".join(names) for run_id, names in held.items()}


def _ended_runs(config: OncallConfig, run_ids: set[str]) -> frozenset[str]:
    if not run_ids:
        return frozenset()
    runs = Tracker(config).find(config.registry.experiment)
    return frozenset(r.run_id for r in runs if r.run_id in run_ids and r.status in ENDED_RUN_STATUSES)


# -- the plan: a pure function of the inventory, the policy and the time -------------------------


def plan_retention(found: Inventory, policy: RetentionConfig, now: dt.datetime) -> list[Verdict]:
    """Every directory found, removed or kept with the reason, checkpoints newest first."""
    stale_before = now - dt.timedelta(days=policy.max_age_days)
    by_kind: dict[Kind, list[Entry]] = {"checkpoints": [], "ray-session": [], "scratch": []}
    for entry in sorted(found.entries, key=lambda e: e.modified, reverse=True):
        by_kind[entry.kind].append(entry)
    return [
        *_checkpoint_verdicts(by_kind["checkpoints"], found, policy.checkpoint_runs_kept, stale_before),
        *(_session_verdict(entry, found, stale_before) for entry in by_kind["ray-session"]),
        *(_scratch_verdict(entry, stale_before) for entry in by_kind["scratch"]),
    ]


def _checkpoint_verdicts(
    newest_first: Iterable[Entry], found: Inventory, kept: int, stale_before: dt.datetime
) -> list[Verdict]:
    """Runs of aliased versions and runs in progress are kept; of the others, the ``kept`` newest."""
    verdicts, others = [], 0
    for entry in newest_first:
        protected = _checkpoint_protection(entry, found, stale_before)
        if protected:
            verdicts.append(_verdict(entry, False, protected))
            continue
        others += 1
        if others <= kept:
            verdicts.append(_verdict(entry, False, f"one of the {kept} newest other training runs"))
        else:
            ended = "ended" if entry.run_id in found.ended_runs else "not ended in MLflow but stale"
            verdicts.append(_verdict(entry, True, f"training run {ended}, older than the {kept} newest"))
    return verdicts


def _checkpoint_protection(entry: Entry, found: Inventory, stale_before: dt.datetime) -> str | None:
    if entry.run_id in found.aliased_runs:
        return f"training run of {found.aliased_runs[entry.run_id]}"
    if entry.run_id not in found.ended_runs and entry.modified >= stale_before:
        return "training run not ended in MLflow (RUNNING or unknown) and written recently"
    return None


def _session_verdict(entry: Entry, found: Inventory, stale_before: dt.datetime) -> Verdict:
    if entry.uri == found.latest_session:
        return _verdict(entry, False, "the latest Ray session")
    if entry.pid in found.live_pids:
        return _verdict(entry, False, f"its driver process {entry.pid} is alive")
    if entry.modified >= stale_before:
        return _verdict(entry, False, "written within retention.max_age_days")
    return _verdict(entry, True, f"ended Ray session, nothing written since {entry.modified:%Y-%m-%d}")


def _scratch_verdict(entry: Entry, stale_before: dt.datetime) -> Verdict:
    if entry.modified >= stale_before:
        return _verdict(entry, False, "written within retention.max_age_days")
    return _verdict(entry, True, f"scratch directory untouched since {entry.modified:%Y-%m-%d}")


def _verdict(entry: Entry, remove: bool, reason: str) -> Verdict:
    return Verdict(entry.kind, entry.uri, entry.bytes, entry.modified, remove, reason)


# -- apply -------------------------------------------------------------------------------------


def apply_plan(config: OncallConfig, plan: list[Verdict]) -> RetentionResult:
    """Remove the plan's directories (one failure does not stop the others); logs each one."""
    result = RetentionResult(dry_run=False, plan=plan)
    for verdict in (v for v in plan if v.remove):
        filesystem, path = config.object_store.resolve(verdict.uri)
        try:
            filesystem.delete_dir(path)
        except OSError as exc:  # pyarrow's I/O errors, S3's included, are OSErrors
            result.failed[verdict.uri] = str(exc).strip().splitlines()[0][:300]
            log.warning("retention: could not remove %s: %s", verdict.uri, result.failed[verdict.uri])
            continue
        result.removed.append(verdict.uri)
        log.info(
            "retention: removed %s %s (%s): %s",
            verdict.kind,
            verdict.uri,
            size_text(verdict.bytes),
            verdict.reason,
        )
    log.info(
        "retention: removed %d director%s, freed %s; kept %d",
        len(result.removed),
        "y" if len(result.removed) == 1 else "ies",
        size_text(result.bytes_freed),
        sum(not v.remove for v in plan),
    )
    return result


def size_text(size: int) -> str:
    """Bytes for people: 512 B, 1.4 MB, 2.1 GB (powers of 1000)."""
    units = ("B", "kB", "MB", "GB", "TB")
    exponent = min(int(math.log10(size)) // 3, len(units) - 1) if size >= 1000 else 0
    return f"{size} B" if exponent == 0 else f"{size / 1000**exponent:.1f} {units[exponent]}"
