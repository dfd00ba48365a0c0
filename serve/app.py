"""The Serve application: a FastAPI ingress composed with autoscaling model replicas.

``build_app`` is the application builder for ``serve run`` / ``serve deploy`` (see
``platform/serve/serve_config.yaml``); ``deploy`` is what ``oncall-router serve`` and the demo call.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from pipelines.config import OncallConfig, load_config
from pipelines.errors import ConfigError
from serve.ingress import RouterIngress
from serve.router_model import ReplicaSettings, TicketRouterModel

APP_NAME = "oncall-router"
MODEL_DEPLOYMENT = "TicketRouterModel"  # names that serve_config.yaml's overrides refer to
INGRESS_DEPLOYMENT = "RouterIngress"
INGRESS_CPUS = 0.25  # parses JSON and awaits the model: a fraction of a core is plenty


def build_application(config: OncallConfig) -> Application:
    settings = config.serve
    # Enough requests in flight per replica to fill a batch while the previous one runs.
    model_ongoing = max(2 * settings.max_batch_size, 2 * settings.target_ongoing_requests)
    model = serve.deployment(TicketRouterModel, name=MODEL_DEPLOYMENT).options(
        autoscaling_config={
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_ongoing_requests,
        },
        max_ongoing_requests=model_ongoing,
        ray_actor_options={"num_cpus": settings.replica_cpus, "num_gpus": settings.replica_gpus},
        logging_config=config.logging.serve_logging(),
        user_config=ReplicaSettings.of(settings).model_dump(),
    )
    ingress = serve.deployment(RouterIngress, name=INGRESS_DEPLOYMENT).options(
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": model_ongoing,
        },
        max_ongoing_requests=4 * model_ongoing,
        ray_actor_options={"num_cpus": INGRESS_CPUS},
        logging_config=config.logging.serve_logging(),
    )
    return ingress.bind(model.bind(config), config)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder: ``serve run serve.app:build_app config=prod.yaml data_dir=/data
    serve.alias=champion``. ``config`` is a YAML file over the defaults, ``data_dir`` the data
    directory, any other ``section.key`` an override; ``ONCALL_*`` variables apply as usual."""
    overrides = dict(args)
    files = [Path(overrides.pop("config"))] if "config" in overrides else []
    return build_application(load_config(*files, overrides=overrides))


def deploy(config: OncallConfig) -> str:
    """Start Serve on the running Ray, deploy, and return the base URL once replicas are up
    (they are ready as soon as the alias has a version; until then /readyz answers 503)."""
    host, port = config.serve.host, config.serve.port
    check_port_free(host, port)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(config), name=APP_NAME, route_prefix="/")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown_host}:{port}"


def check_port_free(host: str, port: int) -> None:
    """A clear error instead of a proxy that fails to bind in the background."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"serve.port: cannot listen on {host}:{port} ({exc.strerror})") from None
