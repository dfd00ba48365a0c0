"""MLflow tracking: experiments and runs. Every run of the platform is opened by
:meth:`Tracker.run` and written through a :class:`RunLog`; nothing else calls MLflow's run API.

A run opened by :meth:`Tracker.run` ends ``FINISHED`` when its block returns and ``FAILED`` when
anything escapes it (Ctrl-C and SIGTERM included), so no run is left ``RUNNING`` by a crash of
ours. A run can be reopened (``resume_run_id``): MLflow sets a failed run back to ``RUNNING``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import OncallConfig
from pipelines.errors import RegistryError

log = logging.getLogger(__name__)

# Artifact paths of a training run: the classifier directory and its evaluation report.
MODEL_ARTIFACT = "model"
EVALUATION_ARTIFACT = "evaluation"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
MAX_TAG_CHARS = 4000  # what we keep of a long tag value (reasons, JSON)
FINISHED = "FINISHED"
# MLflow's answers for something that does not exist: a missing model or version is
# RESOURCE_DOES_NOT_EXIST, a missing alias INVALID_PARAMETER_VALUE "… alias X not found."
_ABSENT_CODE = "RESOURCE_DOES_NOT_EXIST"
_ALIAS_NOT_FOUND = re.compile(r"\balias \S+ not found", re.IGNORECASE)
_MAX_REASON_CHARS = 300


def redact(uri: str) -> str:
    """``uri`` with its password (and an http(s) URI's lone user, a token) replaced by ``***``:
    what messages and logs show."""
    scheme, separator, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    if not separator or "@" not in authority:
        return uri
    userinfo, host = authority.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    if not colon and scheme.startswith("http"):  # https://<token>@host: the user is the secret
        user = "***"
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{path}"


def is_absent(exc: MlflowException) -> bool:
    """True when MLflow says the model, version or alias does not exist (and nothing failed)."""
    return exc.error_code == _ABSENT_CODE or (
        exc.error_code == "INVALID_PARAMETER_VALUE" and _ALIAS_NOT_FOUND.search(exc.message) is not None
    )


@contextmanager
def registry_errors(tracking_uri: str, operation: str) -> Iterator[None]:
    """MLflow failures inside the block become a :class:`RegistryError` naming the store (without
    credentials) and ``operation``; "does not exist" answers pass through as they are, for the
    caller to treat as absent."""
    try:
        yield
    except MlflowException as exc:
        if is_absent(exc):
            raise
        raise RegistryError(_failure(tracking_uri, operation, exc.message)) from None
    except OSError as exc:  # requests' connection errors, a store's files
        raise RegistryError(_failure(tracking_uri, operation, str(exc))) from None


def _failure(tracking_uri: str, operation: str, reason: str) -> str:
    shown = redact(tracking_uri)
    first_line = (reason.strip().splitlines() or ["no reason given"])[0].replace(tracking_uri, shown)
    if len(first_line) > _MAX_REASON_CHARS:
        first_line = first_line[:_MAX_REASON_CHARS] + "…"
    return f"MLflow at {shown}: {operation} failed: {first_line}"


def tracking_client(config: OncallConfig) -> MlflowClient:
    if config.tracking_uri.startswith("sqlite:///"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)


def flatten_params(prefix: str, values: Mapping[str, object]) -> dict[str, str]:
    """Nested config → MLflow params (``train.lr``), values as strings within MLflow's limit."""
    params: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            params.update(flatten_params(name, value))
        else:
            params[name] = str(value)[:MAX_PARAM_CHARS]
    return params


@dataclass(frozen=True)
class RunRecord:
    """A run as plain values (what jobs read back: tags, params, metrics, when it ended)."""

    run_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    ended_at: dt.datetime | None

    @classmethod
    def of(cls, run: Any) -> RunRecord:
        end = run.info.end_time
        return cls(
            run_id=run.info.run_id,
            status=run.info.status,
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            ended_at=dt.datetime.fromtimestamp(end / 1000, dt.UTC) if end else None,
        )


class RunLog:
    """Writes to one run: params, metrics, tags (batched) and artifacts; a store that fails is a
    :class:`RegistryError` naming the write."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> RunLog:
        """A writer for a run that another process opened (Ray Train's rank 0 logs into the
        driver's run)."""
        return cls(MlflowClient(tracking_uri=tracking_uri), run_id)

    def params(self, values: Mapping[str, object], prefix: str = "") -> None:
        flat = flatten_params(prefix, values)
        with self._calling("logging params"):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])

    def metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        """Numeric values; NaN (an undefined metric, e.g. F1 with no support) is left out."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if float(v) == float(v)]
        if batch:
            with self._calling("logging metrics"):
                self.client.log_batch(self.run_id, metrics=batch)

    def tags(self, values: Mapping[str, str]) -> None:
        batch = [RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in values.items()]
        if batch:
            with self._calling("logging tags"):
                self.client.log_batch(self.run_id, tags=batch)

    def artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        with self._calling(f"uploading artifacts {artifact_path or ''}".rstrip()):
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def artifact(self, local_file: Path, artifact_path: str | None = None) -> None:
        with self._calling(f"uploading artifact {local_file.name}"):
            self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def _calling(self, operation: str) -> AbstractContextManager[None]:
        return registry_errors(self.client.tracking_uri, f"{operation} to run {self.run_id}")


class Tracker:
    """Experiments and runs of one configuration's tracking store."""

    def __init__(self, config: OncallConfig, client: MlflowClient | None = None) -> None:
        self.config = config
        self.client = client or tracking_client(config)

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created on first use. With an embedded store its artifacts go
        under ``<data_dir>/mlartifacts`` (a server decides for itself)."""
        with self._calling(f"reading experiment '{name}'"):
            experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if not self.config.tracking_uri.startswith(("http://", "https://", "databricks")):
            location = (Path(self.config.artifacts_dir).resolve() / name).as_uri()
        with self._calling(f"creating experiment '{name}'"):
            return self.client.create_experiment(name, artifact_location=location)

    @contextmanager
    def run(
        self,
        experiment: str,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> Iterator[RunLog]:
        """A new run of ``experiment`` (or ``resume_run_id`` reopened), ended by the block."""
        if resume_run_id:
            with self._calling(f"reopening run {resume_run_id}"):
                self.client.update_run(resume_run_id, status="RUNNING")
            run_id = resume_run_id
        else:
            experiment_id = self.experiment_id(experiment)
            with self._calling(f"creating a run of experiment '{experiment}'"):
                run_id = self.client.create_run(
                    experiment_id, run_name=run_name, tags=dict(tags or {})
                ).info.run_id
        try:
            yield RunLog(self.client, run_id)
        except BaseException:
            try:
                with self._calling(f"marking run {run_id} FAILED"):
                    self.client.set_terminated(run_id, status="FAILED")
            except RegistryError as exc:  # the block's own error is the one to report
                log.warning("%s", exc)
            raise
        with self._calling(f"ending run {run_id}"):
            self.client.set_terminated(run_id, status=FINISHED)

    def log_to(self, run_id: str) -> RunLog:
        """A writer for an existing run (evaluate adds its report to a training run)."""
        return RunLog(self.client, run_id)

    def get(self, run_id: str) -> RunRecord:
        with self._calling(f"reading run {run_id}"):
            return RunRecord.of(self.client.get_run(run_id))

    def find(
        self, experiment: str, *, tags: Mapping[str, str] | None = None, finished: bool = False
    ) -> list[RunRecord]:
        """Runs of ``experiment`` whose tags equal ``tags``, newest first; [] if it does not exist."""
        with self._calling(f"searching runs of experiment '{experiment}'"):
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                return []
            # Dotted keys need backticks in MLflow filter strings.
            clauses = [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
            if finished:
                clauses.append(f"attributes.status = '{FINISHED}'")
            runs = self.client.search_runs([found.experiment_id], filter_string=" and ".join(clauses))
        return [RunRecord.of(run) for run in runs]

    def _calling(self, operation: str) -> AbstractContextManager[None]:
        return registry_errors(self.config.tracking_uri, operation)
