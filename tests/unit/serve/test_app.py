"""The Serve application as configured (no Ray cluster): the serve config file, the builder,
replica settings, and the HTTP contract's validation rules."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from pipelines.config import load_config
from pipelines.errors import ConfigError
from serve.app import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT, build_app
from serve.contract import FeedbackIn, TicketIn
from serve.router_model import ReplicaSettings

SERVE_CONFIG = Path(__file__).parents[3] / "platform" / "serve" / "serve_config.yaml"


def test_serve_config_file_is_valid_and_names_our_builder_and_deployments(tmp_path: Path) -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text()))
    (application,) = schema.applications
    module, attribute = application.import_path.split(":")
    builder = getattr(importlib.import_module(module), attribute)
    assert builder is build_app
    assert {d.name for d in application.deployments} <= {MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT}
    built = builder({**application.args, "data_dir": str(tmp_path)})
    assert built._bound_deployment.name == INGRESS_DEPLOYMENT


def test_builder_applies_config_file_and_overrides(tmp_path: Path) -> None:
    config_file = tmp_path / "prod.yaml"
    config_file.write_text("serve:\n  max_replicas: 5\n  max_batch_size: 8\n")
    ingress = build_app(
        {"config": str(config_file), "data_dir": str(tmp_path), "serve.alias": "challenger"}
    )._bound_deployment
    (model,) = ingress.init_args[:1]
    model_config = model._bound_deployment._deployment_config
    assert model_config.autoscaling_config.max_replicas == 5
    assert model_config.user_config["alias"] == "challenger"
    assert model_config.user_config["max_batch_size"] == 8
    assert model_config.max_ongoing_requests >= 8
    assert model_config.max_queued_requests == 512
    assert ingress._deployment_config.max_queued_requests == 512


def test_build_app_names_a_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serve\.max_batch_size"):
        build_app({"data_dir": str(tmp_path), "serve.max_batch_size": 0})


def test_replica_settings_follow_the_serve_section() -> None:
    settings = ReplicaSettings.of(load_config(environ={}, overrides={"serve.alias": "canary"}).serve)
    assert settings.alias == "canary" and settings.max_batch_size == 32
    with pytest.raises(ValidationError, match="alias_poll_interval_s"):
        ReplicaSettings.model_validate({**settings.model_dump(), "alias_poll_interval_s": 0})


def test_ticket_contract_rules() -> None:
    ticket = TicketIn.model_validate({"title": "  disk full  ", "service": "db", "tenant": "ignored"})
    assert ticket.title == "disk full" and ticket.ticket_id is None
    assert "tenant" not in ticket.model_dump()
    for bad, field in (
        ({"title": " "}, "title"),
        ({"service": "db"}, "title"),
        ({"title": 1}, "title"),
        ({"title": "t", "ticket_id": ""}, "ticket_id"),
    ):
        with pytest.raises(ValidationError, match=field):
            TicketIn.model_validate(bad)
    with pytest.raises(ValidationError, match="tenant"):
        FeedbackIn.model_validate({"ticket_id": "T-1", "tenant": "  "})
    for bad, field in (
        ({"title": "\u001c"}, "title"),  # no text once repaired
        ({"title": "ok", "ticket_id": "INC-\ud800"}, "ticket_id"),
        ({"title": "ok", "description": "x" * 70_000}, "description"),
        ({"title": "ok", "service": "x" * 5_000}, "service"),
        ({"title": "ok", "description": "\ud800"}, "description"),  # pydantic refuses a lone surrogate
    ):
        with pytest.raises(ValidationError, match=field):
            TicketIn.model_validate(bad)
