"""The only module that talks to MLflow's model registry: versions, aliases, downloads.

A version's source is the training run's ``model/`` artifact directory (adapter, tokenizer,
labels, ``classifier.json`` and, for a preset base, the base itself): JSON and safetensors
only, nothing that executes on load.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import OncallConfig
from pipelines.errors import ModelError
from pipelines.registry.packaging import classifier_in
from pipelines.registry.tracking import MODEL_ARTIFACT, tracking_client

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
# Run metrics copied onto the version as tags (the evaluation of the test days).
VERSION_METRICS = ("test_top1", "test_top3", "test_macro_f1", "test_ece", "test_abstain_threshold")


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

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
        run = self.client.get_run(run_id)
        if self._registered_model() is None:
            self.client.create_registered_model(self.name, description="oncall ticket → tenant classifier")
        tags: dict[str, Any] = {
            "run_id": run_id,
            "window.train": run.data.params.get("window.train", ""),
            "window.test": run.data.params.get("window.test", ""),
            "archive": run.data.params.get("archive", ""),
            "git_commit": _git_commit(),
        }
        tags.update(
            {name: f"{run.data.metrics[name]:.6f}" for name in VERSION_METRICS if name in run.data.metrics}
        )
        created = self.client.create_model_version(
            self.name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags
        )
        if alias:
            self.client.set_registered_model_alias(self.name, alias, created.version)
        log.info("registered %s version %s from run %s", self.name, created.version, run_id)
        return self.get(version=str(created.version))

    def get(self, *, alias: str | None = None, version: str | None = None) -> VersionRef:
        """A version by alias or number, with a clear error when there is none."""
        if (alias is None) == (version is None):
            raise ModelError("name exactly one of alias or version")
        try:
            found = (
                self.client.get_model_version_by_alias(self.name, alias)
                if alias
                else self.client.get_model_version(self.name, version)
            )
        except MlflowException:
            what = f"alias '{alias}'" if alias else f"version {version}"
            raise ModelError(
                f"registered model '{self.name}' has no {what} in {self.config.tracking_uri}"
            ) from None
        return VersionRef.of(found)

    def alias_or_none(self, alias: str) -> VersionRef | None:
        try:
            return self.get(alias=alias)
        except ModelError:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def download(self, ref: VersionRef, dst: Path) -> Path:
        """The version's classifier directory, downloaded under ``dst``."""
        root = download_artifacts(
            artifact_uri=ref.source, dst_path=str(dst), tracking_uri=self.config.tracking_uri
        )
        return classifier_in(Path(root))

    def _registered_model(self) -> Any:
        try:
            return self.client.get_registered_model(self.name)
        except MlflowException:
            return None


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
