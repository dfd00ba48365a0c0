"""MLflow's model registry: versions, aliases, the gate's record, downloads.

A version's source is the training run's ``model/`` artifact directory (adapter, tokenizer,
labels, ``classifier.json`` and, for a preset base, the base itself): JSON and safetensors
only, nothing that executes on load.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import tempfile
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import OncallConfig
from pipelines.contract.days import DayWindow
from pipelines.errors import ModelError
from pipelines.registry.packaging import classifier_in
from pipelines.registry.tracking import (
    MAX_TAG_CHARS,
    MODEL_ARTIFACT,
    redact,
    registry_errors,
    tracking_client,
)

if TYPE_CHECKING:
    from pipelines.model.inference import CpuRuntime, TicketClassifier

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
# Run metrics copied onto the version as tags (the evaluation of the test days).
VERSION_METRICS = ("test_top1", "test_top3", "test_macro_f1", "test_ece", "test_abstain_threshold")
# The days a run trained, validated and tested on: run params, copied onto the version as tags.
WINDOW_KEYS = ("window.train", "window.validation", "window.test")
# A tag of the registered model (not of a version): when the nightly last succeeded (ISO 8601).
NIGHTLY_SUCCESS_TAG = "nightly.last_success"
# A tag of the registered model while ``crown`` moves the aliases: {"champion": v, "previous": v|null}.
PENDING_PROMOTION_TAG = "promotion.pending"


class MissingVersionError(ModelError):
    """The registered model, the version or the alias does not exist."""


def window_params(train: DayWindow, validation: DayWindow, test: DayWindow) -> dict[str, str]:
    """The ``window.*`` params of a training run (the one place their names and form are set)."""
    return dict(zip(WINDOW_KEYS, (str(train), str(validation), str(test)), strict=True))


@dataclass(frozen=True)
class GateRecord:
    """What the promotion gate decided for a version, kept on it as ``gate.*`` tags so that a
    crashed nightly finishes the decision instead of gating twice."""

    decision: Literal["promoted", "rejected"]
    reasons: tuple[str, ...]
    champion: str | None  # the champion it was gated against
    regressions: list[dict[str, float | str]] = field(default_factory=list)
    new_tenants: dict[str, float] = field(default_factory=dict)  # tenant → challenger recall
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    REASON_SEPARATOR = "; "

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def as_tags(self) -> dict[str, str]:
        return {
            "gate.decision": self.decision,
            "gate.reasons": self.REASON_SEPARATOR.join(self.reasons)[:MAX_TAG_CHARS],
            "gate.regressions": json.dumps(self.regressions)[:MAX_TAG_CHARS],
            "gate.new_tenants": json.dumps(self.new_tenants)[:MAX_TAG_CHARS],
            "gate.champion": self.champion or "",
            "gate.at": self.at,
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> GateRecord | None:
        """The record kept on a version, None if it was never gated. Long JSON values may have
        been cut to fit a tag: they are read back as empty rather than failing."""
        decision = tags.get("gate.decision")
        if decision not in ("promoted", "rejected"):
            return None
        return cls(
            decision=decision,
            reasons=tuple(r for r in tags.get("gate.reasons", "").split(cls.REASON_SEPARATOR) if r),
            champion=tags.get("gate.champion") or None,
            regressions=_json_or(tags.get("gate.regressions"), []),
            new_tenants=_json_or(tags.get("gate.new_tenants"), {}),
            at=tags.get("gate.at", ""),
        )


def _json_or(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except json.JSONDecodeError:
        return default


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @property
    def train_window(self) -> DayWindow | None:
        return DayWindow.parse(self.tags.get("window.train", ""))

    @property
    def test_window(self) -> DayWindow | None:
        return DayWindow.parse(self.tags.get("window.test", ""))

    @property
    def gate(self) -> GateRecord | None:
        return GateRecord.from_tags(self.tags)

    @classmethod
    def of(cls, model_version: ModelVersion) -> VersionRef:
        return cls(
            name=model_version.name,
            version=str(model_version.version),
            run_id=model_version.run_id or "",
            source=model_version.source,
            tags=dict(model_version.tags),
            aliases=tuple(model_version.aliases),
        )


class Registry:
    def __init__(self, config: OncallConfig, client: MlflowClient | None = None) -> None:
        self.config = config
        self.name = config.registry.model_name
        self.client = client or tracking_client(config)

    def register_run(self, run_id: str, *, alias: str | None = CHALLENGER) -> VersionRef:
        """A new version from a training run's classifier, tagged with its metrics and window."""
        with self._calling(f"reading run {run_id}"):
            run = self.client.get_run(run_id)
        if self._registered_model() is None:
            with self._calling(f"creating registered model '{self.name}'"):
                self.client.create_registered_model(
                    self.name, description="oncall ticket → tenant classifier"
                )
        tags: dict[str, Any] = {
            "run_id": run_id,
            **{key: run.data.params.get(key, "") for key in WINDOW_KEYS},
            "archive": run.data.params.get("archive", ""),
            "git_commit": _git_commit(),
        }
        tags.update(
            {name: f"{run.data.metrics[name]:.6f}" for name in VERSION_METRICS if name in run.data.metrics}
        )
        with self._calling(f"registering run {run_id} as a version of '{self.name}'"):
            created = self.client.create_model_version(
                self.name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags
            )
        if alias:
            self.set_alias(alias, str(created.version))
        log.info("registered %s version %s from run %s", self.name, created.version, run_id)
        return self.get(version=str(created.version))

    def get(self, *, alias: str | None = None, version: str | None = None) -> VersionRef:
        """A version by alias or number. A missing model, version or alias is a
        :class:`MissingVersionError`; a registry that fails to answer is a
        :class:`~pipelines.errors.RegistryError`, never mistaken for "none"."""
        if (alias is None) == (version is None):
            raise ModelError("name exactly one of alias or version")
        what = f"alias '{alias}'" if alias else f"version {version}"
        try:
            with self._calling(f"reading {what} of '{self.name}'"):
                found = (
                    self.client.get_model_version_by_alias(self.name, alias)
                    if alias
                    else self.client.get_model_version(self.name, version)
                )
        except MlflowException:  # only "does not exist" gets through registry_errors
            raise MissingVersionError(
                f"registered model '{self.name}' has no {what} in {redact(self.config.tracking_uri)}"
            ) from None
        return VersionRef.of(found)

    def alias_or_none(self, alias: str) -> VersionRef | None:
        """The version ``alias`` names; None only when the registry says there is none."""
        try:
            return self.get(alias=alias)
        except MissingVersionError:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        with self._calling(f"setting alias '{alias}' of '{self.name}' to version {version}"):
            self.client.set_registered_model_alias(self.name, alias, version)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        with self._calling(f"tagging version {version} of '{self.name}'"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)

    def record_nightly_success(self, at: dt.datetime) -> None:
        """On the registered model, where every serving replica reads it (and exports it for the
        alert on a stale nightly); nothing to record on before the first version."""
        if self._registered_model() is None:
            log.warning("no registered model '%s': the nightly's success is not recorded", self.name)
            return
        with self._calling(f"tagging registered model '{self.name}'"):
            self.client.set_registered_model_tag(
                self.name, NIGHTLY_SUCCESS_TAG, at.isoformat(timespec="seconds")
            )

    def last_nightly_success(self) -> dt.datetime | None:
        """None before the first success, or when the tag was edited into something unreadable."""
        model = self._registered_model()
        recorded = model.tags.get(NIGHTLY_SUCCESS_TAG) if model is not None else None
        try:
            return dt.datetime.fromisoformat(recorded) if recorded else None
        except ValueError:
            log.warning("tag %s of '%s' is not a time: %r", NIGHTLY_SUCCESS_TAG, self.name, recorded)
            return None

    def versions_of_run(self, run_id: str) -> list[VersionRef]:
        """Versions registered from a training run (a resumed nightly registers it once)."""
        with self._calling(f"searching versions of '{self.name}'"):
            found = self.client.search_model_versions(f"name='{self.name}' and run_id='{run_id}'")
        return sorted((VersionRef.of(v) for v in found), key=lambda ref: int(ref.version))

    def record_gate(self, version: str, record: GateRecord) -> None:
        self.tag(version, record.as_tags())

    def crown(self, version: str, *, dethroned: str | None) -> None:
        """``version`` becomes the champion; the champion it replaces (``dethroned``) stays
        reachable as ``previous`` for a rollback. The two alias moves are written ahead as a tag
        of the registered model and the tag is cleared after both: a job that dies between them
        leaves the move for the next job to finish (:meth:`finish_interrupted_promotion`)."""
        move = {"champion": version, "previous": dethroned if dethroned != version else None}
        with self._calling(f"tagging registered model '{self.name}'"):
            self.client.set_registered_model_tag(self.name, PENDING_PROMOTION_TAG, json.dumps(move))
        self._move_aliases(move)
        log.info("version %s is now %s", version, CHAMPION)

    def finish_interrupted_promotion(self) -> str | None:
        """Completes an alias move that a crashed promotion left half done (the gate had decided
        it); returns the version crowned then, or None when nothing was pending. Call it under
        the jobs' lock before reading or moving aliases."""
        model = self._registered_model()
        pending = model.tags.get(PENDING_PROMOTION_TAG) if model is not None else None
        if not pending:
            return None
        try:
            move = json.loads(pending)
            version, previous = str(move["champion"]), move.get("previous")
        except (ValueError, KeyError, TypeError):
            raise ModelError(
                f"tag {PENDING_PROMOTION_TAG} of '{self.name}' is not a pending promotion: {pending[:200]!r}; "
                "check the aliases by hand and delete the tag"
            ) from None
        log.warning(
            "finishing the promotion of version %s that an interrupted job left half done "
            "(%s → version %s, %s → version %s)",
            version,
            CHAMPION,
            version,
            PREVIOUS,
            previous,
        )
        self._move_aliases({"champion": version, "previous": previous})
        return version

    def _move_aliases(self, move: Mapping[str, str | None]) -> None:
        """``previous`` first: a crash after it leaves the old champion serving and the move
        pending (idempotent, so finishing it again is safe)."""
        if move["previous"] is not None:
            self.set_alias(PREVIOUS, move["previous"])
        self.set_alias(CHAMPION, str(move["champion"]))
        with self._calling(f"deleting tag {PENDING_PROMOTION_TAG} of '{self.name}'"):
            self.client.delete_registered_model_tag(self.name, PENDING_PROMOTION_TAG)

    def rollback(self) -> tuple[str, str]:
        """``champion`` moves back to ``previous`` (which is then cleared); returns (from, to).
        A rollback that died after moving ``champion`` is finished: ``previous`` is cleared."""
        previous = self.alias_or_none(PREVIOUS)
        current = self.alias_or_none(CHAMPION)
        if previous is None or current is None:
            raise ModelError(f"nothing to roll back to: '{self.name}' has no '{PREVIOUS}' alias")
        if previous.version == current.version:
            with self._calling(f"deleting alias '{PREVIOUS}' of '{self.name}'"):
                self.client.delete_registered_model_alias(self.name, PREVIOUS)
            raise ModelError(
                f"nothing to roll back to: '{PREVIOUS}' was version {current.version}, the champion itself "
                "(an interrupted rollback); cleared it"
            )
        self.set_alias(CHAMPION, previous.version)
        with self._calling(f"deleting alias '{PREVIOUS}' of '{self.name}'"):
            self.client.delete_registered_model_alias(self.name, PREVIOUS)
        self.tag(
            current.version, {"gate.rolled_back_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        )
        return current.version, previous.version

    def download(self, ref: VersionRef, dst: Path) -> Path:
        """The version's classifier directory, downloaded under ``dst``."""
        with self._calling(f"downloading version {ref.version} of '{self.name}'"):
            root = download_artifacts(
                artifact_uri=ref.source, dst_path=str(dst), tracking_uri=self.config.tracking_uri
            )
        return classifier_in(Path(root))

    def tenants(self, ref: VersionRef) -> tuple[str, ...]:
        """The tenants a version knows (its ``labels.json``, downloaded alone)."""
        from pipelines.model.artifact import LABELS_FILE, LabelSet  # torch: not at the CLI's start-up

        labels_uri = f"{ref.source}/{classifier_in(Path()).as_posix()}/{LABELS_FILE}"
        with tempfile.TemporaryDirectory(prefix="oncall-labels-") as folder:
            with self._calling(f"downloading the labels of version {ref.version} of '{self.name}'"):
                path = download_artifacts(
                    artifact_uri=labels_uri, dst_path=folder, tracking_uri=self.config.tracking_uri
                )
            return LabelSet.load(Path(path).parent).tenants

    def download_run_model(self, run_id: str, dst: Path) -> Path:
        """The classifier directory of a training run (registered or not), downloaded under
        ``dst``. A missing run or artifact is a :class:`ModelError`; a store that fails, a
        :class:`RegistryError`."""
        try:
            with self._calling(f"downloading the '{MODEL_ARTIFACT}' artifact of run {run_id}"):
                root = download_artifacts(
                    run_id=run_id,
                    artifact_path=MODEL_ARTIFACT,
                    dst_path=str(dst),
                    tracking_uri=self.config.tracking_uri,
                )
        except MlflowException as exc:  # only "does not exist" gets through registry_errors
            raise ModelError(
                f"run {run_id} has no '{MODEL_ARTIFACT}' artifact in {redact(self.config.tracking_uri)}: "
                f"{exc.message.strip().splitlines()[0] if exc.message.strip() else 'not found'}"
            ) from None
        return classifier_in(Path(root))

    def load_classifier(
        self,
        ref: VersionRef | None = None,
        *,
        alias: str | None = None,
        version: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
        merge: bool = True,
        cpu_runtime: CpuRuntime = "eager",
    ) -> TicketClassifier:
        """The classifier of ``ref``, or of the version ``alias`` or ``version`` names, loaded
        from a temporary download; its ``version`` is set. ``cpu_runtime``: the scoring paths
        pass ``inference.cpu_runtime``; the default is the fp32 reference."""
        # Imported here: torch stays out of the CLI's and the nightly's start-up.
        from pipelines.model.inference import TicketClassifier

        ref = ref or self.get(alias=alias, version=version)
        with tempfile.TemporaryDirectory(prefix="oncall-version-") as folder:
            classifier = TicketClassifier.from_dir(
                self.download(ref, Path(folder)),
                device=device,
                batch_size=batch_size,
                merge=merge,
                cpu_runtime=cpu_runtime,
            )
        classifier.version = ref.version
        return classifier

    def _registered_model(self) -> Any:
        """The registered model; None only when the registry says it does not exist."""
        try:
            with self._calling(f"reading registered model '{self.name}'"):
                return self.client.get_registered_model(self.name)
        except MlflowException:  # only "does not exist" gets through registry_errors
            return None

    def _calling(self, operation: str) -> AbstractContextManager[None]:
        return registry_errors(self.config.tracking_uri, operation)


def _git_commit() -> str:
    """The commit of the code that registered the version, when run from a checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"
